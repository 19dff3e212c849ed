"""The Takens-LoRA overlay (format `takens-lora/1`): maths and file format.

For token embeddings e_1..e_T (rows of the base model's embedding table):

    u_t  = A e_t                               (r)
    s_t  = sum_k W[k] * u_{t - tau_k}          (r; u_j = 0 for j < 1)
    e'_t = e_t + (alpha / r) * B f(s_t)        (d)

The overlay changes what the model observes, never its weights; with B = 0 it
is exactly the base model.
"""
