"""mnist_ddp: the blog's MNIST dropout MLP, trained fast on one process or many with DDP."""

__version__ = "0.1.0"
