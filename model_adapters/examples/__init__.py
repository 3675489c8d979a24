"""Example custom providers (see model_adapters.custom_provider)."""
