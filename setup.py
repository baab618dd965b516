from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="llmc",
    version="0.1.0",
    description="Prune large language models blockwise from a YAML config",
    packages=find_packages(include=["llmc", "llmc.*"]),
    package_data={"llmc": ["py.typed"]},  # the public API is typed (PEP 561)
    python_requires=">=3.10",
    install_requires=requirements,
    # ria: RIA's linear-sum-assignment permutation (lsa); eval: lm-evaluation-harness tasks
    # (eval.tasks), pinned as its figures are compared; plot: llmc report's plots; deploy:
    # save.format: compressed-tensors (packed low-bit weights for transformers and vLLM)
    extras_require={"test": ["pytest>=7", "matplotlib", "scipy", "compressed-tensors"],
                    "plot": ["matplotlib"], "ria": ["scipy"], "eval": ["lm-eval==0.4.13"],
                    "deploy": ["compressed-tensors"]},
    entry_points={"console_scripts": ["llmc=llmc.cli:main"]},
)
