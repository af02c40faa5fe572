"""Methods as compositions of named parts: losses (and, later, samplers, classifiers, post-hoc steps)."""
