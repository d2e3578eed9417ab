"""Until the family registry lands: make `load_hf` / `save_hf` know the CLIP vision and LLaVA
families for the duration of a test, from the records their hf_mapping modules provide.

The lead registers these families in the registry at merge; this shim then goes away. Saving
picks the family by the model's config class, because the CLIP tower is `SiglipVisionTower`.
"""

import pytest

from vlmkit.models.clip import hf_mapping as clip_map
from vlmkit.models.clip.config import ClipVisionConfig
from vlmkit.models.llava import hf_mapping as llava_map
from vlmkit.models.llava.model import Llava
from vlmkit.models.siglip.model import SiglipVisionTower
from vlmkit.weights import hf

CLIP = hf.Family(("clip_vision_model",), SiglipVisionTower, clip_map.config_from_hf, clip_map.config_to_hf,
                 clip_map.table, clip_map.normalise_key, clip_map.to_hub_name, None)
LLAVA = hf.Family(("llava",), Llava, llava_map.config_from_hf, llava_map.config_to_hf, llava_map.table,
                  llava_map.normalise_key, llava_map.to_hub_name, r"^language_model\.lm_head\.weight$")


@pytest.fixture
def pending_families(monkeypatch):
    original = hf.family_for

    def family_for(model):
        if isinstance(getattr(model, "cfg", None), ClipVisionConfig):
            return CLIP
        return LLAVA if type(model) is Llava else original(model)

    monkeypatch.setattr(hf, "FAMILIES", [CLIP, LLAVA, *hf.FAMILIES])
    monkeypatch.setattr(hf, "family_for", family_for)
