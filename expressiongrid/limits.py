"""Resource limits: the largest inputs the tool accepts, each refused with a clear message beyond it.

They are far above anything a real study needs and low enough that the checks themselves, planning and
parsing stay within seconds and memory stays bounded. docs/study-file.md lists them for users.
"""

from __future__ import annotations

# Characters in one prompt or negative prompt after the template is filled (A1111 has no limit; 10,000
# characters are about 2,500 tokens = 34 chunks of 75, and keep the PNG/EXIF metadata within bounds).
MAX_PROMPT_CHARS = 10_000
# Brackets open at once, in prompt editing and in emphasis (deeper than this is never a real prompt).
MAX_NESTING = 100
# Cells of one study (rows x columns x pages x seeds per cell), checked before anything is expanded.
MAX_CELLS = 100_000
# Pixels of one composed grid page before it is split into parts (Pillow's own bomb limit is 179 MP).
MAX_GRID_PIXELS = 178_956_970
# Sampling steps and image sides a study may ask for.
MAX_STEPS = 1_000
MAX_SIDE = 8_192
# Bytes of a text file read whole into memory (study, character, expression set, settings).
MAX_TEXT_FILE_BYTES = 4 * 1024 * 1024
# Bytes of a safetensors header (the JSON before the tensors).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# |weight| of a LoRA in a <lora:...> tag, a character file or the LoRA weight axis.
MAX_NETWORK_WEIGHT = 100.0
# CLIP skip: how many of SD 1.5's 12 text-encoder layers may be left out, plus one (A1111's slider).
MAX_CLIP_SKIP = 12
# Seeds side by side in one cell (seed_policy = "per-cell", xyz --seeds-per-cell).
MAX_SEEDS_PER_CELL = 64
# Pixels of margin around a grid's cells ([output] margin, xyz --margin).
MAX_MARGIN = 500
