"""Hugging Face export: configuration_lrnn.py and modeling_lrnn.py are copied verbatim next to the weights and
loaded with `trust_remote_code`, so they import nothing from this repository; convert.py (repository side) writes
a LanguageModel in their format."""
