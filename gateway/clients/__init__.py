"""gateway/clients."""
