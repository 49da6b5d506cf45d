"""The judge runtime: compiled prompt program + (conversation, response) pairs -> a B×Q×L
tensor of label distributions, with one forward pass per question position and the
response's prefix shared by every question."""
