"""Losses beyond the core set, one concept per module; re-exported by `fdl.losses`.

Each is a primitive with its derivation; `fdl.losses` is the public name
(`fdl.losses.kl_divergence`, …).
"""
