"""Export: merge the adapter, convert to GGUF with llama.cpp, quantize, and write the Ollama Modelfile."""
