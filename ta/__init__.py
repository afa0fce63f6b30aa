"""The TeachingAssistant library: what the DVC stages in stages/ share, grouped by the part of the pipeline.

    ta.data    prepare: reading, formats, filters, deduplication, the split (and the drill sets)
    ta.train   base (tiny), sft and dpo: trainer arguments, launching, checkpoints, tracking, memory
    ta.export  merge, gguf and quantize: llama.cpp's converter and quantizer, parity, the Modelfile
    ta.eval    eval: runtimes, metrics, the judge

plus ta.config (params.yaml, typed and validated), ta.paths (every path of dvc.yaml), ta.errors (the one
root of user-facing errors), ta.models (the pinned base and how to load it) and ta.chat (the chat format).
Dependencies point one way: stages -> ta; serve -> ta; nothing in ta imports a stage or serve.
"""
