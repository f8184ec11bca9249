"""Training: the distillation trainer and its losses, the teacher's logits, students built from the teacher, precision and processes."""
