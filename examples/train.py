"""Train a policy with AEPOTrainer: the `aepo train` command (`aepo_trainer/cli/train.py`), runnable as a script.

    python examples/train.py --config examples/configs/demo.yaml                 # CPU, offline, a few minutes
    accelerate launch examples/train.py --config examples/configs/demo.yaml      # the same through accelerate
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/train.py --config examples/configs/demo.yaml
    accelerate launch examples/train.py --config examples/configs/qlora_consumer_gpu.yaml   # 7B, 4-bit, LoRA

`examples/configs` is the package's `aepo_trainer/configs` (shipped in the wheel: `aepo train --config demo`). Every
`AEPOConfig` field, every `ModelConfig` field (LoRA, 4-bit loading) and the script arguments of
`aepo_trainer.cli.train.TrainScriptArguments` are flags and YAML keys; flags override the YAML file. See
docs/training.md.
"""

import sys

from aepo_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
