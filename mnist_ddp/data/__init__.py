"""The data: reading and checking MNIST and digits, the splits, each epoch's order and shards."""
