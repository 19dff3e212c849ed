"""The appliance image: packing a built image into a signed bundle, loading a verified one into
container storage, and choosing which installed version runs.

The image's own rules (what its artifacts must be) live with the other trust rules, in
`trust/image_rules.py`; its import is every bundle's import (`store.importer`). docs/procedures.md
says how the first image arrives by hand and how later ones arrive.
"""
