# Stage 1: the training set in EDM's dataset format (zip of PNGs + dataset.json), once per run.
# Downloads are local rules: compute nodes often have no internet. An existing EDM-format dataset
# (`name: edm`) is checked and linked, not copied (a multi-terabyte ImageNet stays where it is):
# the link is made on the login node; with `copy: true` a job writes a stored zip instead.


include: "common_data.smk"


if config["dataset"]["name"] == "edm":
    if edm_dataset_is_link():

        localrules:
            prepare_dataset,

    rule prepare_dataset:
        input:
            edm_dataset_path(),
        output:
            (
                directory(DATASET)
                if edm_dataset_is_link() and edm_dataset_is_folder()
                else DATASET
            ),
        log:
            f"{LOGS}/prepare_dataset.log",
        benchmark:
            f"{BENCH}/prepare_dataset.tsv"
        conda:
            CONDA_ENV
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset"),
        params:
            aot=AOT_CLI,
            args=edm_import_flags(),
        shell:
            "{params.aot} data import --source {input:q} --dest {output:q} {params.args} "
            "> {log:q} 2>&1"

elif config["dataset"]["name"] == "cifar10":

    if cifar_source_is_url():

        localrules:
            download_cifar10,

        rule download_cifar10:
            output:
                f"{DOWNLOADS}/cifar-10-python.tar.gz",
            log:
                f"{LOGS}/download_cifar10.log",
            benchmark:
                f"{BENCH}/download_cifar10.tsv"
            conda:
                CONDA_ENV
            params:
                aot=AOT_CLI,
                args=flags(
                    {
                        "url": config["dataset"]["source"],
                        "md5": config["dataset"].get("md5"),
                    }
                ),
            shell:
                "{params.aot} data download {params.args} --dest {output:q} > {log:q} 2>&1"

    rule prepare_dataset:
        input:
            cifar_tarball(),
        output:
            DATASET,
        log:
            f"{LOGS}/prepare_dataset.log",
        benchmark:
            f"{BENCH}/prepare_dataset.tsv"
        conda:
            CONDA_ENV
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset"),
        params:
            aot=AOT_CLI,
            args=flags({"md5": config["dataset"].get("md5")}),
        shell:
            "{params.aot} data cifar10 --source {input:q} {params.args} --dest {output:q} "
            "> {log:q} 2>&1"

else:

    rule prepare_dataset:
        output:
            DATASET,
        log:
            f"{LOGS}/prepare_dataset.log",
        benchmark:
            f"{BENCH}/prepare_dataset.tsv"
        conda:
            CONDA_ENV
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset"),
        params:
            aot=AOT_CLI,
            args=flags({"resolution": config["dataset"]["resolution"]}),
        shell:
            "{params.aot} data digits {params.args} --dest {output:q} > {log:q} 2>&1"
