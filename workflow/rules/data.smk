# Stage 1: the training set in EDM's dataset format (zip of PNGs + dataset.json), once per run.
# Downloads are local rules: compute nodes often have no internet.

DATASET = f"{R}/data/dataset.zip"


def _cifar_source_is_url():
    return str(config["dataset"].get("source", "")).startswith(("http://", "https://"))


if config["dataset"]["name"] == "cifar10":

    if _cifar_source_is_url():

        localrules:
            download_cifar10,

        rule download_cifar10:
            output:
                f"{DOWNLOADS}/cifar-10-python.tar.gz",
            params:
                url=config["dataset"]["source"],
                md5=config["dataset"].get("md5", ""),
            log:
                f"{LOGS}/download_cifar10.log",
            benchmark:
                f"{BENCH}/download_cifar10.tsv"
            conda:
                ENV
            shell:
                "{PY} -m aot.data download --url {params.url:q} --md5 {params.md5:q} --dest {output:q} > {log:q} 2>&1"

    rule prepare_dataset:
        input:
            f"{DOWNLOADS}/cifar-10-python.tar.gz" if _cifar_source_is_url() else config["dataset"]["source"],
        output:
            DATASET,
        params:
            md5=config["dataset"].get("md5", ""),
        log:
            f"{LOGS}/prepare_dataset.log",
        benchmark:
            f"{BENCH}/prepare_dataset.tsv"
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset", 30, 8000),
        conda:
            ENV
        shell:
            "{PY} -m aot.data cifar10 --source {input:q} --md5 {params.md5:q} --dest {output:q} > {log:q} 2>&1"

else:

    rule prepare_dataset:
        output:
            DATASET,
        params:
            resolution=config["dataset"]["resolution"],
        log:
            f"{LOGS}/prepare_dataset.log",
        benchmark:
            f"{BENCH}/prepare_dataset.tsv"
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset", 10, 2000),
        conda:
            ENV
        shell:
            "{PY} -m aot.data digits --resolution {params.resolution} --dest {output:q} > {log:q} 2>&1"
