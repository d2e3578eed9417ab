"""Composable parts of vision-language models: activations, vision feature selection,
connectors (image features -> text width) and the placement of image features in the prompt."""
