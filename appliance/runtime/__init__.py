"""The runtime: llama.cpp through its low-level API, our sampler and decode loop, the chat Session."""
