"""Square-image ViT geometry shared by the vision-tower configs (SigLIP / CLIP, InternViT)."""


class PatchGrid:
    """Mixin for a config dataclass with `image_size`, `patch_size`, `hidden_size`, `num_heads`."""

    def check_patch_grid(self, allow_remainder: bool = False) -> None:
        """ValueError unless the image tiles into whole patches (or `allow_remainder`: the patch
        conv then drops the remainder) and the width into whole heads."""
        if self.image_size % self.patch_size and not allow_remainder:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2
