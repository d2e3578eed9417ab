"""Data curation: `vlmkit data curate IN OUT [--config curate.toml]` (see docs/curation.md).

- `rules`: the row dict, the `Rule` protocol and the registry (`RULES`); rule modules:
  `rules_text`, `rules_image`, `rules_multimodal`, `dedup`, `balance`;
- `config`: the TOML config; `io`: streaming input and resumable output; `engine`: the
  single-process, resumable run (`curate`); `tally` + `report`: report.json / report.html;
- `cli`: the `curate` sub-parser.
"""
