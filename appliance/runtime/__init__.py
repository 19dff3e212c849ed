"""The runtime: llama.cpp through its low-level API, our sampler and decode loop, the chat Session.

Every module that loads llama.cpp is in this package, so this runs before the library is loaded.
"""

import os

# ggml's crash handler (a GGML_ASSERT, a hostile GGUF) would fork and run `gdb` from PATH against this
# process, which holds keys: any gdb on PATH, as this user. With the variable set it only aborts.
os.environ["GGML_NO_BACKTRACE"] = "1"
