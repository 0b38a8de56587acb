"""The node tree: names, the namespace over a metadata store and a blob store."""
