"""Stage 2, the plan: which tensors hold weight matrices, what each result is called, and how to
cut it out of what is read (fused experts, quantized weights)."""
