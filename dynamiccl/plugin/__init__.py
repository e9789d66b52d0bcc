"""The dynamiccl NCCL tuner plugin: C source, how it is built, and a ctypes binding.

- ``tuner.c`` / ``tuner_abi.h``: ``libnccl-tuner-dynamiccl.so``, exporting NCCL's tuner ABI v2..v6;
- ``build``: ``dynamiccl plugin build`` compiles it with the system C compiler, cached by source hash;
- ``binding``: loads the library with ctypes and drives it as NCCL does (tests, doctor, live runs).
"""

from __future__ import annotations

PLUGIN_FILE_NAME = "libnccl-tuner-dynamiccl.so"
# The plugin reads its table (the text of ``dynamiccl.table.plugin_text``) from the path in this variable.
TABLE_ENV = "DYNAMICCL_TUNER_TABLE"
ABI_VERSIONS = (6, 5, 4, 3, 2)  # NCCL's dlsym order: ncclTunerPlugin_v6 first
