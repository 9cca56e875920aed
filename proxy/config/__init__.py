"""sites.yaml: the model, the parser, reading the file, live reload and in-place edits."""
