"""The class tree and what hangs off it: the :class:`~hiertree.tree.taxonomy.Taxonomy` (YAML in, index-mapping
matrices out), label maps of dataset mask values (:mod:`.labels`), colours (:mod:`.colors`) and the bundled YAMLs
(:mod:`.taxonomies`)."""
