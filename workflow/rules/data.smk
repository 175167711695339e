# Stage 1: the training set in EDM's dataset format (zip of PNGs + dataset.json), once per run.
# Downloads are local rules: compute nodes often have no internet.


if config["dataset"]["name"] == "cifar10":

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
                ENV
            params:
                aot=AOT,
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
            ENV
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset"),
        params:
            aot=AOT,
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
            ENV
        threads: threads_for("prepare_dataset")
        resources:
            **resources_for("prepare_dataset"),
        params:
            aot=AOT,
            args=flags({"resolution": config["dataset"]["resolution"]}),
        shell:
            "{params.aot} data digits {params.args} --dest {output:q} > {log:q} 2>&1"
