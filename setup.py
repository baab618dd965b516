from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="llmc",
    version="0.1.0",
    description="Prune large language models blockwise from a YAML config",
    packages=find_packages(include=["llmc", "llmc.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    # ria: RIA's linear-sum-assignment permutation (lsa); eval: lm-evaluation-harness tasks
    # (eval.tasks), pinned as its figures are compared; plot: llmc report's plots
    extras_require={"test": ["pytest>=7", "matplotlib", "scipy"], "plot": ["matplotlib"],
                    "ria": ["scipy"], "eval": ["lm-eval==0.4.13"]},
    entry_points={"console_scripts": ["llmc=llmc.cli:main"]},
)
