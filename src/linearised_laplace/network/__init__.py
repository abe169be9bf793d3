"""The network side: inputs, the parameters to linearise, and the features ``J(x)`` as operators."""
