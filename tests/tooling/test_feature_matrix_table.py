"""The README's composition table is the one rendered from the matrix the tests check
(allegro_devtools/feature_matrix.py), so the two cannot drift apart."""
from allegro_devtools.feature_matrix import MODES, PAIRED, WEIGHTS, cells, markdown_table
from scripts.feature_matrix_table import README, readme_table


def test_the_readme_table_is_the_generated_one():
    assert readme_table(README.read_text(encoding="utf-8")) == markdown_table(), \
        "README.md's feature matrix is stale: run `python -m scripts.feature_matrix_table --write`"


def test_every_pair_is_a_cell_once_and_the_multi_gpu_cells_run_last_grouped_by_layout():
    every = cells()
    assert len({cell.id for cell in every}) == len(every)
    pairs = [cell for cell in every if len(cell.features) <= 1]
    assert len(pairs) == len(WEIGHTS) * len(MODES) * (len(PAIRED) + 1)
    layouts = [("multigpu_cfg2" in c.features) * 2 + ("multigpu_seq2" in c.features) for c in every]
    assert layouts == sorted(layouts)
