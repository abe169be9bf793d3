"""The papers' experiments: image classification (and, later, tomography)."""
