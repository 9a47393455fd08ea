"""Python code shared by the lesion-segmentation bundles (symlinked as each bundle's ``scripts`` package)."""
