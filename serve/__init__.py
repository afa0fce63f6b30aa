"""Serving beside the DAG: vLLM (LoRA adapter, no merge), llama.cpp's server and Ollama, plus clients."""
