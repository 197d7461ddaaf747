"""The entrypoint's name RunPod's Hub looks for; the worker is handler_volume_optimized.py (the image's CMD).

    python handler.py --test     # the same as python handler_volume_optimized.py --test
"""

import sys

from handler_volume_optimized import main

if __name__ == "__main__":
    sys.exit(main())
