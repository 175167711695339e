# Input functions of the pool-size study (pool_study.smk): the study's models and sample sets.
