"""hydra-compose: mixed GPU/CPU machines as one llama.cpp RPC endpoint."""

__version__ = "0.1.0"
