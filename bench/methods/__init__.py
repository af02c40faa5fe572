"""Methods as compositions of named parts, each registered by name in bench/registry.py: losses, classifier
heads and MaxNorm, post-hoc steps, HS regularisers, zero-shot heads and PEFT adapters."""
