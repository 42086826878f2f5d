"""The torch fine-tuning stage: LoRA (peft) and full fine-tuning of classification models,
SAMed for the SAM family, each with the benchmark's mitigations. It reads images, not the cache."""
