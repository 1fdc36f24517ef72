"""Applications built on the library: the ``spec`` command line, the demo, the benchmark, training and tree
front-ends, and the shipped model with its build. Library modules never import this package."""
