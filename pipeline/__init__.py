"""Covertype KFP v1 pipeline package: the DSL, its components and the local mode.

Kept import-free so the small modules the images carry (`schema`, `ml_client`) load
without kfp.
"""
