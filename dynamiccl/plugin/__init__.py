"""The dynamiccl NCCL tuner plugin: C source, how it is built, and a ctypes binding.

- the C files, one job each (``tuner.h`` lists them): ``table.c`` parses the table, ``comm.c`` indexes
  it per communicator and counts positions, ``decide.c`` decides a call, ``plugin.c`` is the ABI glue;
  ``tuner_abi.h`` is NCCL's tuner ABI v2..v6. They build ``libnccl-tuner-dynamiccl.so``, which
  exports only the ``ncclTunerPlugin_vN`` symbols NCCL looks up;
- ``instrumented.c`` adds dynamiccl's own entry points (override, counters, the table parser, reset)
  in a second library, ``libnccl-tuner-dynamiccl-instrumented.so``, for tests, ``dynamiccl doctor``,
  table checks and live measurement;
- ``build``: ``dynamiccl plugin build`` compiles both with the system C compiler, cached by source hash;
- ``binding``: loads a library with ctypes and drives it as NCCL does.
"""

from __future__ import annotations

PLUGIN_FILE_NAME = "libnccl-tuner-dynamiccl.so"  # what NCCL loads
INSTRUMENTED_FILE_NAME = "libnccl-tuner-dynamiccl-instrumented.so"  # the same, plus dynamiccl's entry points
TABLE_ENV = "DYNAMICCL_TUNER_TABLE"  # the plugin reads its table (``dynamiccl.table.plugin_text``) from this path
# "1" when a communicator is created: its getChunkSize keeps NCCL's chunk (the launcher sets it where
# dynamiccl.knobs.safety refuses a table's chunk sizes)
NO_CHUNK_ENV = "DYNAMICCL_TUNER_NO_CHUNK"
ABI_VERSIONS = (6, 5, 4, 3, 2)  # NCCL's dlsym order: ncclTunerPlugin_v6 first
