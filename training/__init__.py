"""xiaophi training: Chinese text → byte-level BPE tokenizer → pretrain → SFT → DPO checkpoints."""
