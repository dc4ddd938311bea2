import _repo

from analysis.table1 import read_comparisons, write_table

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
table = write_table(read_comparisons(snakemake.input.comparisons), snakemake.output.markdown,  # noqa: F821
                    snakemake.output.csv)  # noqa: F821
log.info("Table 1: %d rows", len(table))
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
