import csv

import pytest

from casdap.continual.results import (
    backward_transfer,
    final_accuracy,
    forgetting,
    learning_accuracy,
    write_acc_matrix_csv,
    write_final_results,
)

# A[i][j]: accuracy on task j after training task i.
A = [
    [0.9, None, None],
    [0.6, 0.8, None],
    [0.7, 0.5, 0.95],
]


def test_definitions_match_dap():
    assert final_accuracy(A) == pytest.approx((0.7 + 0.5 + 0.95) / 3)
    # forgetting: best accuracy ever on task j minus final, over all but the last task
    assert forgetting(A) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.5)) / 2)
    assert learning_accuracy(A) == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert backward_transfer(A) == pytest.approx(((0.7 - 0.9) + (0.5 - 0.8)) / 2)


def test_single_task_has_no_forgetting_value():
    assert forgetting([[0.5]]) is None and backward_transfer([[0.5]]) is None
    assert final_accuracy([[0.5]]) == 0.5


def test_joint_row_is_written_after_the_last_task(tmp_path):
    write_acc_matrix_csv(tmp_path / "m.csv", [[0.8, 0.9]], 2)
    assert list(csv.reader(open(tmp_path / "m.csv")))[1] == ["1", "0.800000", "0.900000"]
    write_final_results(tmp_path / "f.txt", "", [[0.8, 0.9]], 2)
    text = (tmp_path / "f.txt").read_text()
    assert "Final test Accuracy: 0.85000" in text and "Final test Forget: nan" in text


def test_csv_layout(tmp_path):
    write_acc_matrix_csv(tmp_path / "m.csv", A[:2], 3)
    rows = list(csv.reader(open(tmp_path / "m.csv")))
    assert rows[0] == ["after_task", "task_0", "task_1", "task_2"]
    assert rows[1] == ["0", "0.900000", "", ""]
    assert rows[2][:3] == ["1", "0.600000", "0.800000"] and rows[2][3] == ""


def test_final_results_in_dap_layout(tmp_path):
    write_final_results(tmp_path / "final_results.txt", "SEED: 0\n", A, 3, ["Key selection: batch_majority"])
    text = (tmp_path / "final_results.txt").read_text()
    assert text.startswith("SEED: 0")
    assert "Final test Accuracy: 0.71667" in text
    assert "Final test Forget: 0.25000" in text
    assert "Final test LA: 0.88333" in text
    assert text.index("Final test Accuracy") < text.index("Final test Forget") < text.index("Final test LA")
    assert "Key selection: batch_majority" in text
    # DAP prints the matrix with rows = evaluated task, columns = after task, zeros where unseen
    assert "[0.9  0.6  0.7 ]" in text
