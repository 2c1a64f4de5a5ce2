"""Vaa3D neuron_distance scores (ESA, DSA, PDS) and the SWC reader."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnunet_ext.cli import main
from nnunet_ext.io.swc import read_swc, tree_from_arrays, write_swc
from nnunet_ext.evaluation.tracing_metrics import (
    distances_to_segments,
    neuron_distance,
    neuron_distance_on_folders,
    point_to_segment_distances,
    sample_edge_points,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bigneuron_sample"


def chain(points, first_id: int = 1):
    """A single unbranched tree through ``points`` (first point is the root)."""
    n = len(points)
    ids = np.arange(first_id, first_id + n)
    parents = np.r_[-1, ids[:-1]]
    return tree_from_arrays(ids, points, parents)


def sample_tree(name: str):
    path = SAMPLE / name
    if not path.is_file():
        pytest.skip("shared BigNeuron sample data not available")
    return read_swc(path)


# --------------------------------------------------------------------------- sampling and distances
def test_sampling_follows_vaa3d_rule():
    # N = int(1 + L + 0.5): L = 3 -> 4 points; L = 1.4 -> 2; L = 0.4 -> 1 (the child alone); L = 2.5 -> 4.
    child = np.array([[3.0, 0, 0], [0, 0, 1.4], [5, 5, 5.4], [0, 2.5, 0]])
    parent = np.array([[0.0, 0, 0], [0, 0, 0], [5, 5, 5], [0, 0, 0]])
    points = sample_edge_points(child, parent)
    assert len(points) == 4 + 2 + 1 + 4
    np.testing.assert_allclose(points[:4], [[3, 0, 0], [2, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(points[4:6], [[0, 0, 1.4], [0, 0, 0]])
    np.testing.assert_allclose(points[6], [5, 5, 5.4])
    np.testing.assert_allclose(points[7:], [[0, 2.5, 0], [0, 2.5 * 2 / 3, 0], [0, 2.5 / 3, 0], [0, 0, 0]])


def test_point_to_segment_distance_cases():
    start = np.array([[0.0, 0, 0]] * 4)
    end = np.array([[4.0, 0, 0], [4.0, 0, 0], [4.0, 0, 0], [0.0, 0, 0]])
    points = np.array([[2.0, 3, 0], [-3.0, 4, 0], [7.0, 0, 4], [1.0, 1, 1]])
    # inside the segment, before its start, after its end, degenerate segment
    np.testing.assert_allclose(point_to_segment_distances(points, start, end), [3, 5, 5, math.sqrt(3)])


def test_kd_tree_distances_equal_brute_force():
    rng = np.random.default_rng(0)
    seg_start = rng.uniform(0, 40, (400, 3))
    seg_end = seg_start + rng.normal(0, 4, (400, 3))
    seg_end[:5] = seg_start[:5]  # degenerate segments
    seg_end[5] = seg_start[5] + [60, 0, 0]  # one very long segment
    points = rng.uniform(-20, 80, (3000, 3))
    brute = np.min([point_to_segment_distances(points, np.broadcast_to(a, points.shape), np.broadcast_to(b, points.shape))
                    for a, b in zip(seg_start, seg_end)], axis=0)
    np.testing.assert_array_equal(distances_to_segments(points, seg_start, seg_end), brute)


# --------------------------------------------------------------------------- hand-computed trees
def test_hand_computed_l_shaped_pair():
    # Tree A: (0,0,0)-(3,0,0): 4 points x = 3,2,1,0 at distances sqrt(x^2 + 1) from B's segment x=0, y in [1, 4].
    # Tree B: (0,1,0)-(0,4,0): 4 points y = 4,3,2,1 at distances y from A's segment.
    tree_a = chain([[0, 0, 0], [3, 0, 0]])
    tree_b = chain([[0, 1, 0], [0, 4, 0]])
    m = neuron_distance(tree_a, tree_b)
    distances_a = [1, math.sqrt(2), math.sqrt(5), math.sqrt(10)]
    distances_b = [1, 2, 3, 4]
    assert m.n_points_1 == 4 and m.n_points_2 == 4
    assert m.ESA_12 == pytest.approx(np.mean(distances_a))
    assert m.ESA_21 == pytest.approx(2.5)
    assert m.ESA == pytest.approx((np.mean(distances_a) + 2.5) / 2)  # 2.226570
    # >= 2 (the point at exactly 2 counts): A {sqrt5, sqrt10}, B {2, 3, 4}
    assert m.DSA == pytest.approx(((math.sqrt(5) + math.sqrt(10)) / 2 + 3) / 2)  # 2.849587
    assert m.PDS_12 == pytest.approx(0.5) and m.PDS_21 == pytest.approx(0.75)
    assert m.PDS == pytest.approx(0.625)


def test_asymmetric_case_and_dsa_one_direction():
    # A is part of B: A's points all lie on B (ESA_12 = 0); B has an extra branch 5 long going up from (2,0,0).
    tree_a = chain([[0, 0, 0], [4, 0, 0]])
    ids = [1, 2, 3, 4]
    tree_b = tree_from_arrays(ids, [[0, 0, 0], [2, 0, 0], [4, 0, 0], [2, 5, 0]], [-1, 1, 2, 2])
    m = neuron_distance(tree_a, tree_b)
    assert m.ESA_12 == 0 and m.PDS_12 == 0
    # B's points: edge 2->1 (3 points, distance 0), edge 3->2 (3 points, 0), edge 4->2 (N = int(6.5) = 6 points at
    # y = 5, 4, 3, 2, 1, 0 -> distances 5, 4, 3, 2, 1, 0).
    assert m.n_points_2 == 12
    assert m.ESA_21 == pytest.approx(15 / 12)
    assert m.ESA == pytest.approx(15 / 24)
    assert m.DSA == pytest.approx((5 + 4 + 3 + 2) / 4)  # only B -> A has far points: that direction alone
    assert m.PDS == pytest.approx((0 + 4 / 12) / 2)
    swapped = neuron_distance(tree_b, tree_a)
    assert (swapped.ESA_12, swapped.ESA_21, swapped.ESA, swapped.DSA, swapped.PDS) == pytest.approx(
        (m.ESA_21, m.ESA_12, m.ESA, m.DSA, m.PDS))


def test_close_trees_have_dsa_zero_and_threshold_option():
    tree_a = chain([[0, 0, 0], [10, 0, 0]])
    tree_b = chain([[0, 1, 0], [10, 1, 0]])
    m = neuron_distance(tree_a, tree_b)
    assert m.ESA == pytest.approx(1.0) and m.DSA == 0 and m.PDS == 0
    strict = neuron_distance(tree_a, tree_b, threshold=1.0)
    assert strict.DSA == pytest.approx(1.0) and strict.PDS == pytest.approx(1.0)


def test_spacing_scales_before_sampling():
    tree_a = chain([[0, 0, 0], [3, 0, 0]])
    tree_b = chain([[0, 1, 0], [0, 4, 0]])
    scaled = neuron_distance(tree_a, tree_b, spacing=(2.0, 0.5, 1.0))
    by_hand = neuron_distance(chain([[0, 0, 0], [6, 0, 0]]), chain([[0, 0.5, 0], [0, 2, 0]]))
    assert scaled == by_hand
    assert scaled.n_points_1 == 7  # A is 6 long after scaling


def test_isolated_roots_are_neither_points_nor_targets():
    tree_a = chain([[0, 0, 0], [3, 0, 0]])
    with_isolated = tree_from_arrays([1, 2, 9], [[0, 1, 0], [0, 4, 0], [1, 0, 0]], [-1, 1, -1])
    assert neuron_distance(tree_a, with_isolated) == neuron_distance(tree_a, chain([[0, 1, 0], [0, 4, 0]]))
    lonely = tree_from_arrays([1], [[0, 0, 0]], [-1])
    with pytest.raises(ValueError, match="no parent-child edge"):
        neuron_distance(tree_a, lonely)


# --------------------------------------------------------------------------- real BigNeuron tracings
def test_sample_tree_against_itself_is_zero():
    tree = sample_tree("test-expected.swc")
    m = neuron_distance(tree, tree)
    assert m.ESA == pytest.approx(0, abs=1e-9) and m.DSA == 0 and m.PDS == 0
    assert m.n_points_1 == m.n_points_2 > len(tree)


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_flattened_sample_tree_against_shifted_copy_is_the_shift(shift):
    """A planar copy of a real tracing shifted off its plane: every point is exactly |shift| from the copy."""
    tree = sample_tree("test.small.swc")
    flat = tree_from_arrays(tree.ids, tree.coordinates * [1, 1, 0], tree.parent_ids)
    m = neuron_distance(flat, flat.translated([0, 0, shift]))
    assert m.ESA_12 == pytest.approx(shift) and m.ESA_21 == pytest.approx(shift)
    assert m.DSA == pytest.approx(shift if shift >= 2 else 0.0)
    assert m.PDS == (1.0 if shift >= 2 else 0.0)


def test_sample_tree_shift_bounds_and_symmetry():
    tree = sample_tree("test-expected.swc")
    shifted = tree.translated([4.0, -3.0, 0.0])  # |shift| = 5
    m = neuron_distance(tree, shifted)
    # Every point has its shifted twin 5 away, so no distance exceeds 5; most points are near 5 away.
    assert 3.0 < m.ESA_12 <= 5.0 and 3.0 < m.ESA_21 <= 5.0
    other = sample_tree("test-small.swc")
    forward, backward = neuron_distance(tree, other), neuron_distance(other, tree)
    assert (forward.ESA, forward.DSA, forward.PDS) == pytest.approx((backward.ESA, backward.DSA, backward.PDS))
    assert forward.ESA_12 == pytest.approx(backward.ESA_21)


def test_sample_files_distances_regression_by_brute_force():
    """The real pair through the KD-tree path equals a brute-force evaluation of the same definition."""
    tree_1, tree_2 = sample_tree("test.small.swc"), sample_tree("test-small.swc")
    m = neuron_distance(tree_1, tree_2)
    points = sample_edge_points(*tree_1.edges())
    starts, ends = tree_2.edges()
    brute = np.min([point_to_segment_distances(points, np.broadcast_to(a, points.shape), np.broadcast_to(b, points.shape))
                    for a, b in zip(starts, ends)], axis=0)
    assert m.ESA_12 == pytest.approx(brute.mean(), rel=1e-12)
    assert m.PDS_12 == pytest.approx(np.mean(brute >= 2))


# --------------------------------------------------------------------------- SWC reader
@pytest.mark.parametrize("text, message", [
    ("1 1 0 0 0 1 -1\n2 3 1 0 0\n", r":2: expected 7 fields"),
    ("1 1 0 0 0 1 -1\n2 3 1 zero 0 1 1\n", r":2: non-numeric"),
    ("1 1 0 0 0 1 -1\n1 3 1 0 0 1 1\n", r":2: duplicate node id 1 \(first used at .*:1\)"),
    ("# header\n1 1 0 0 0 1 -1\n2 3 1 0 0 1 7\n", r":3: parent id 7 of node 2 is not in the file"),
    ("1 1 0 0 0 1 -1\n2 3 1 0 0 1 2\n", r":2: node 2 is its own parent"),
    ("1.5 1 0 0 0 1 -1\n", r":1: id must be an integer"),
    ("1 1 0 nan 0 1 -1\n", r":1: coordinates must be finite"),
    ("# only a comment\n\n", r": no SWC node"),
])
def test_malformed_swc_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.swc"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.swc" + message):
        read_swc(path)


def test_swc_reader_accepts_commas_tabs_and_eswc_columns(tmp_path):
    path = tmp_path / "tree.eswc"
    path.write_text("#n,type,x,y,z,radius,parent\n  1,1,0,0,0,1,-1,0,0\n2\t3\t3\t0\t0\t1\t1\t5 6 7\n")
    tree = read_swc(path)
    np.testing.assert_array_equal(tree.parent_ids, [-1, 1])
    np.testing.assert_allclose(tree.coordinates, [[0, 0, 0], [3, 0, 0]])
    written = write_swc(tree, tmp_path / "copy.swc")
    assert read_swc(written).coordinates.tolist() == tree.coordinates.tolist()
    with pytest.raises(FileExistsError):
        write_swc(tree, written)


# --------------------------------------------------------------------------- CLI
def test_cli_pair_and_folder_mode(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_swc(chain([[0, 0, 0], [3, 0, 0]]), a / "n1.swc")
    write_swc(chain([[0, 1, 0], [0, 4, 0]]), b / "n1.swc")
    write_swc(chain([[0, 0, 0], [10, 0, 0]]), a / "n2.swc")
    write_swc(chain([[0, 1, 0], [10, 1, 0]]), b / "n2.swc")
    assert main(["tracing-metrics", str(a / "n1.swc"), str(b / "n1.swc")]) == 0
    assert "(ESA)                = 2.226570" in capsys.readouterr().out

    output = tmp_path / "metrics.csv"
    assert main(["tracing-metrics", str(a), str(b), "-o", str(output)]) == 0
    table = pd.read_csv(output)
    assert list(table["name"]) == ["n1.swc", "n2.swc"]
    assert table["ESA"].tolist() == pytest.approx([2.2265700, 1.0], abs=1e-6)
    assert table["PDS"].tolist() == pytest.approx([0.625, 0.0])

    write_swc(chain([[0, 0, 0], [1, 0, 0]]), a / "only_in_a.swc")
    assert main(["tracing-metrics", str(a), str(b), "-o", str(output), "--overwrite"]) == 1
    assert "only_in_a.swc" in capsys.readouterr().err
    assert main(["tracing-metrics", str(a), str(b), "-o", str(output)]) == 1  # exists, no --overwrite
    with pytest.warns(UserWarning, match="only_in_a"):
        assert len(neuron_distance_on_folders(a, b, allow_missing=True, progress=False)) == 2
    assert main(["tracing-metrics", str(a), str(b / "n1.swc")]) == 1
    assert main(["tracing-metrics", str(a), str(b)]) == 1  # folder mode needs -o
    assert main(["tracing-metrics", str(a / "n1.swc"), str(b / "n1.swc"), "--spacing", "1", "2"]) == 1


def vaa3d_literal_port(tree_1, tree_2, threshold=2.0):
    """Line-by-line Python port of Vaa3D's neuron_score_rounding_nearest_neighbor (neuron_sim_scores.cpp)."""

    def edges(tree):
        row_of = {int(n): i for i, n in enumerate(tree.ids)}
        return [(tree.coordinates[i], tree.coordinates[row_of[int(p)]])
                for i, p in enumerate(tree.parent_ids) if p >= 0]

    def dist_pt_to_line_seg(p0, p1, p2):
        if np.array_equal(p1, p2):
            return float(np.linalg.norm(p0 - p1))
        if np.array_equal(p0, p1) or np.array_equal(p0, p2):
            return 0.0
        d12, d01 = p2 - p1, p1 - p0
        t = -np.dot(d12, d01) / np.dot(d12, d12)
        if t < 0 or t > 1:
            return min(np.linalg.norm(p0 - p1), np.linalg.norm(p0 - p2))
        return float(np.linalg.norm(p1 + d12 * t - p0))

    def directional(edges_1, edges_2):
        total, n, total_big, n_big = 0.0, 0, 0.0, 0
        for child, parent in edges_1:
            length = np.linalg.norm(child - parent)
            count = int(1 + length + 0.5)
            step = np.zeros(3) if count <= 1 else (1.0 / (count - 1)) * (parent - child)
            for j in range(count):
                point = child + step * j
                d = min(dist_pt_to_line_seg(point, a, b) for a, b in edges_2)
                total, n = total + d, n + 1
                if d >= threshold:
                    total_big, n_big = total_big + d, n_big + 1
        return total, n, total_big, n_big

    e1, e2 = edges(tree_1), edges(tree_2)
    s12, n1, b12, nb1 = directional(e1, e2)
    s21, n2, b21, nb2 = directional(e2, e1)
    if nb1 and nb2:
        dsa = (b12 / nb1 + b21 / nb2) / 2
    else:
        dsa = b12 / nb1 if nb1 else (b21 / nb2 if nb2 else 0.0)
    return (s12 / n1 + s21 / n2) / 2, dsa, (nb1 / n1 + nb2 / n2) / 2


def test_real_pair_equals_literal_port_of_vaa3d():
    tree_1, tree_2 = sample_tree("test.small.swc"), sample_tree("test-small.swc")
    # Cropped to keep the pure-Python port fast.
    def crop(tree, n):
        # The first n nodes of the file; a node whose parent is cut off becomes a root (the result is a forest).
        parents = np.where(np.isin(tree.parent_ids, tree.ids[:n]), tree.parent_ids, -1)[:n]
        return tree_from_arrays(tree.ids[:n], tree.coordinates[:n], parents)

    small_1, small_2 = crop(tree_1, 60), crop(tree_2, 60)
    # Another tracing of the same tree: node positions jittered by ~1.5 voxels, so distances straddle 2.
    rng = np.random.default_rng(7)
    jittered = tree_from_arrays(small_1.ids, small_1.coordinates + rng.normal(0, 1.5, small_1.coordinates.shape),
                                small_1.parent_ids)
    for first, second in ((small_1, jittered), (small_1, small_2)):
        m = neuron_distance(first, second)
        esa, dsa, pds = vaa3d_literal_port(first, second)
        assert (m.ESA, m.DSA, m.PDS) == pytest.approx((esa, dsa, pds), rel=1e-9)
    assert 0.1 < neuron_distance(small_1, jittered).PDS < 0.9  # a mixed case: some points near, some far
