import json
from pathlib import Path

from mlt_project.eval import evaluate
from mlt_project.factories import create_datamodule, create_model, create_trainer
from mlt_project.train import train


def test_fast_dev_run(processed):
    trainer = create_trainer(processed, logger=False, fast_dev_run=True)
    trainer.fit(create_model(processed), datamodule=create_datamodule(processed))
    assert trainer.state.finished


def test_train_then_evaluate_writes_checkpoint_and_metrics(processed):
    metrics = train(processed)
    assert Path(processed.paths.model).is_file()
    assert "val/acc" in metrics
    results = evaluate(processed)
    assert json.loads(Path(processed.paths.metrics).read_text()) == results
    assert set(results["per_class"]) == {"circle", "square", "stripes"}
