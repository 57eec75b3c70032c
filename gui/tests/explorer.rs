//! The explorer driven through egui_kittest on a fixture run: what each view shows, navigation,
//! the prompt view's background engine, and the error states (no store, a corrupted table, a
//! damaged contexts table, an unfinished harvest, no run at all, no model, an engine that fails
//! to open or panics).

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use saescope_gui::engine::{EngineFactory, PromptEngine};
use saescope_gui::fixture::{self, FixtureSpec, RESID_DICT, Z_DICT};
use saescope_gui::{ExploreError, Explorer, Memory, SteerPush, Steered, View};
use saescope_store::DictDir;
use saescope_store::prompt::{ActiveFeature, Attribution, PromptView, TokenView};
use std::path::{Path, PathBuf};

const SPEC: FixtureSpec = FixtureSpec {
    features: 200,
    contexts: 3,
    heads: 4,
};

fn harness(
    run: Option<PathBuf>,
    memory: Memory,
    engine: Option<EngineFactory>,
) -> Harness<'static, Explorer> {
    let mut app = Explorer::new(run, memory, engine, None);
    app.settle();
    let mut h = Harness::builder()
        .with_size([1400.0, 1000.0])
        .build_state(|ctx, app: &mut Explorer| app.ui(ctx), app);
    h.run();
    h
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let run = fixture::make_run(dir.path(), &SPEC);
    (dir, run)
}

fn type_into(h: &mut Harness<'_, Explorer>, role: egui::accesskit::Role, text: &str) {
    h.get_by_role(role).focus();
    h.run();
    h.get_by_role(role).type_text(text);
    h.run();
}

fn goto(h: &mut Harness<'_, Explorer>, view: &str) {
    h.get_by_label(view).click();
    h.run();
}

#[test]
fn overview_lists_the_run_and_its_dictionaries() {
    let (_tmp, run) = fixture();
    let h = harness(Some(run.clone()), Memory::default(), None);
    h.get_by_label(&format!("Run {}", run.display()));
    h.get_by_label("256"); // tokens harvested
    h.get_by_label(RESID_DICT);
    h.get_by_label(Z_DICT);
    // FVU, L0, dead fraction and CE recovered of both dictionaries, as written by the fixture.
    assert_eq!(h.get_all_by_label("0.1250").count(), 2);
    assert_eq!(h.get_all_by_label("0.062").count(), 2);
    assert_eq!(h.get_all_by_label("0.875").count(), 2);
    h.get_by_label(&format!("Training of {RESID_DICT}"));
    h.get_by_label("FVU over tokens");
}

#[test]
fn feature_list_searches_sorts_and_filters_by_density() {
    let (_tmp, run) = fixture();
    let mut h = harness(Some(run), Memory::default(), None);
    goto(&mut h, "Features");
    h.get_by_label(&format!(
        "{} of {} features shown; log10 density across features (click a bar to filter):",
        SPEC.features, SPEC.features
    ));
    // Sorted by density, densest first: the last feature heads the list.
    assert_eq!(h.state().list.rows[0], SPEC.features as u32 - 1);

    // Search by a promoted token: the features whose first promoted token it is.
    type_into(&mut h, egui::accesskit::Role::TextInput, "word5");
    let expect: Vec<u32> = (0..SPEC.features as u32)
        .filter(|&f| fixture::top_token(f).contains("word5"))
        .collect();
    let mut shown = h.state().list.rows.clone();
    shown.sort_unstable();
    assert_eq!(shown, expect);
    h.get_by_label(&format!(
        "{} of {} features shown; log10 density across features (click a bar to filter):",
        expect.len(),
        SPEC.features
    ));

    // Clear the search, then click one density bar.
    h.state_mut().list.search.clear();
    h.state_mut().list = Default::default();
    h.run();
    let in_bin: Vec<u32> = (0..SPEC.features as u32)
        .filter(|&f| {
            let x = (fixture::density(f, SPEC.features) + 1e-10).log10();
            (-5.0..-4.5).contains(&x)
        })
        .collect();
    assert!(!in_bin.is_empty());
    h.get_by_label(&format!(
        "density 1e-5.0 to 1e-4.5: {} features",
        in_bin.len()
    ))
    .click();
    h.run();
    let mut shown = h.state().list.rows.clone();
    shown.sort_unstable();
    assert_eq!(shown, in_bin);

    // Sort by feature number, ascending.
    h.get_by_label("Clear density filter").click();
    h.run();
    h.get_by_label("by feature").click();
    h.run();
    assert_eq!(h.state().list.rows[..3], [0, 1, 2]);
}

#[test]
fn feature_page_shows_contexts_and_navigates_like_a_browser() {
    let (_tmp, run) = fixture();
    let mut h = harness(Some(run), Memory::default(), None);
    goto(&mut h, "Features");
    // Keyboard: the first row is selected; Enter opens it.
    h.key_press(egui::Key::Enter);
    h.run();
    let first = SPEC.features as u32 - 1;
    h.get_by_label(&format!("Feature {first}"));
    // Top contexts with their focus tokens, interval samples, promoted tokens, neighbours.
    for rank in 0..SPEC.contexts {
        h.get_by_label(&format!(" ctx{first}r{rank}"));
    }
    h.get_by_label_contains("Interval 1: activations");
    h.get_by_label(&format!(
        "{}  +{:.3}",
        fixture::top_token(first),
        0.5 + (first % 7) as f32
    ));
    let nb = (first + 1) % SPEC.features as u32;
    h.get_by_label(&format!("#{nb}  cos 0.900  jaccard 0.250"))
        .click();
    h.run();
    h.get_by_label(&format!("Feature {nb}"));
    h.get_by_label(&format!(" ctx{nb}r0"));
    assert_eq!(h.state().history, vec![first, nb]);

    h.get_by_label("◀ Back").click();
    h.run();
    h.get_by_label(&format!("Feature {first}"));
    h.get_by_label("Forward ▶").click();
    h.run();
    h.get_by_label(&format!("Feature {nb}"));
    // The page remembers the feature for the next launch.
    assert_eq!(h.state().memory.feature, Some(nb));
}

/// An engine whose answers follow from the text: token i is the i-th word, and its one active
/// feature is the word's length with activation 0.5 × length.
struct Words;

impl PromptEngine for Words {
    fn view(&mut self, text: &str, top: usize) -> Result<PromptView, ExploreError> {
        assert_eq!(top, 5);
        Ok(PromptView {
            hook: "blocks.2.attn.hook_z".into(),
            tokens: text
                .split_whitespace()
                .enumerate()
                .map(|(i, w)| TokenView {
                    position: i,
                    token_id: i as u32,
                    token: format!(" {w}"),
                    features: vec![ActiveFeature {
                        feature: w.len() as u32,
                        activation: 0.5 * w.len() as f32,
                        quantile: Some(0.5),
                    }],
                })
                .collect(),
        })
    }
    fn attribution(
        &mut self,
        text: &str,
        feature: u32,
        dest: usize,
    ) -> Result<Attribution, ExploreError> {
        let tokens: Vec<String> = text.split_whitespace().map(|w| format!(" {w}")).collect();
        Ok(Attribution {
            feature,
            dest,
            pre_activation: 1.5,
            constant: 0.5,
            by_head_source: (0..2)
                .map(|h| (0..tokens.len()).map(|s| 0.25 * (h + s) as f32).collect())
                .collect(),
            tokens,
        })
    }
    /// Clean text fixed, steered text naming the push; feature 6 cannot be steered.
    fn steer(
        &mut self,
        text: &str,
        feature: u32,
        push: SteerPush,
        max_new_tokens: usize,
    ) -> Result<Steered, ExploreError> {
        assert_eq!(max_new_tokens, 24);
        if feature == 6 {
            return Err(ExploreError::Engine(format!(
                "feature {feature} never fired"
            )));
        }
        Ok(Steered {
            prompt: text.to_owned(),
            feature,
            push,
            clean: " and then it rained".into(),
            steered: format!(" pushed {feature} by {push}"),
            mean_kl: 0.25,
        })
    }
}

/// Steps frames (a spinner keeps asking for them) until no spinner is left.
fn wait_for_worker(h: &mut Harness<'_, Explorer>) {
    for _ in 0..500 {
        h.step();
        std::thread::sleep(std::time::Duration::from_millis(10));
        h.step();
        if h.query_by_role(egui::accesskit::Role::ProgressIndicator)
            .is_none()
            && h.query_by_label("running the model…").is_none()
        {
            h.run();
            return;
        }
    }
    panic!("the prompt worker did not answer");
}

#[test]
fn prompt_view_runs_in_the_background_and_shades_by_a_feature() {
    let (_tmp, run) = fixture();
    let opened = std::sync::Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let seen = opened.clone();
    let factory: EngineFactory = Box::new(move |dir: &Path| {
        seen.lock().unwrap().push(dir.to_owned());
        Ok(Box::new(Words) as Box<dyn PromptEngine>)
    });
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        ..Memory::default()
    };
    let mut h = harness(Some(run.clone()), memory, Some(factory));
    goto(&mut h, "Prompt");
    type_into(
        &mut h,
        egui::accesskit::Role::MultilineTextInput,
        "tiny words matter",
    );
    h.get_by_label("Run").click();
    wait_for_worker(&mut h);
    assert_eq!(
        *opened.lock().unwrap(),
        vec![run.join("dictionaries").join(Z_DICT)]
    );
    for (i, w) in ["tiny", "words", "matter"].iter().enumerate() {
        h.get_by_label(&format!(" {w}"));
        h.get_by_label(&format!("#{} {:.2}, q0.50", w.len(), 0.5 * w.len() as f32));
        let _ = i;
    }
    // Choose feature 5 ("words"), then destination token 2: the attribution grid appears.
    h.get_by_label("#5 2.50, q0.50").click();
    h.run();
    h.get_by_label("shading by feature 5");
    // The token appears in the shaded prompt and in the table; the table's is clickable.
    let matter: Vec<_> = h.get_all_by_label(" matter").collect();
    assert_eq!(matter.len(), 2);
    matter[1].click();
    wait_for_worker(&mut h);
    h.get_by_label_contains("feature 5 at token 2: pre-activation 1.500 = constant 0.500");
    h.get_by_label("head 1");
    h.get_by_label("+0.75"); // head 1, source 2

    // Clamping the shaded feature (to 0 unless changed) continues the prompt both ways.
    h.get_by_label("Clamp feature 5 to");
    h.get_by_label("Continue clean and clamped").click();
    wait_for_worker(&mut h);
    h.get_by_label("steered (clamp to 0.00)");
    h.get_by_label(" pushed 5 by clamp to 0.00");
    h.get_by_label(" and then it rained");
    assert_eq!(h.get_all_by_label("tiny words matter").count(), 2);
    // A steering error shows by the clamp; the prompt's table stays.
    h.get_by_label("#6 3.00, q0.50").click();
    h.run();
    h.get_by_label("Continue clean and clamped").click();
    wait_for_worker(&mut h);
    h.get_by_label("Error: feature 6 never fired");
    h.get_by_label("#4 2.00, q0.50");
}

#[test]
fn feature_page_steers_on_the_worker() {
    let (_tmp, run) = fixture();
    let factory: EngineFactory = Box::new(|_: &Path| Ok(Box::new(Words) as Box<dyn PromptEngine>));
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        feature: Some(7),
        ..Memory::default()
    };
    let mut h = harness(Some(run), memory, Some(factory));
    goto(&mut h, "Feature");
    h.get_by_label("Feature 7");
    assert!(
        h.get_by_label("Generate").accesskit_node().is_disabled(),
        "nothing to generate without a prompt"
    );
    type_into(&mut h, egui::accesskit::Role::TextInput, "Once upon a time");
    h.get_by_label("Generate").click();
    wait_for_worker(&mut h);
    h.get_by_label(
        "feature 7, add 4.00: mean KL from the clean next-token distributions 0.250 nats",
    );
    h.get_by_label("clean");
    h.get_by_label("steered (add 4.00)");
    h.get_by_label(" and then it rained");
    h.get_by_label(" pushed 7 by add 4.00");
    assert_eq!(h.get_all_by_label("Once upon a time").count(), 2);
    // Clamp instead: the same slider now gives the activation.
    h.get_by_label("clamp").click();
    h.run();
    h.get_by_label("Generate").click();
    wait_for_worker(&mut h);
    h.get_by_label(" pushed 7 by clamp to 4.00");
    // Another feature's page does not show this one's result.
    h.state_mut().open_feature(8);
    h.run();
    h.get_by_label("Feature 8");
    assert!(h.query_by_label(" pushed 7 by clamp to 4.00").is_none());
}

#[test]
fn heads_view_counts_features_by_their_main_head() {
    let (_tmp, run) = fixture();
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        ..Memory::default()
    };
    let mut h = harness(Some(run), memory, None);
    goto(&mut h, "Heads");
    for head in 0..SPEC.heads {
        let count = (0..SPEC.features as u32)
            .filter(|&f| fixture::main_head(f, SPEC.heads) == head)
            .count();
        h.get_by_label(&format!("L2H{head}: {count}"));
    }
    h.get_by_label_contains("L2H3: ").click();
    h.run();
    let first = (0..SPEC.features as u32)
        .find(|&f| fixture::main_head(f, SPEC.heads) == 3)
        .unwrap();
    h.get_by_label(&format!("#{first}  share 0.600")).click();
    h.run();
    assert_eq!(h.state().view, View::Feature);
    h.get_by_label(&format!("Feature {first}"));
}

#[test]
fn missing_and_corrupted_stores_say_what_makes_them() {
    let (_tmp, run) = fixture();
    let dict = DictDir::in_run(&run, RESID_DICT);
    std::fs::remove_dir_all(dict.features()).unwrap();
    let mut h = harness(Some(run.clone()), Memory::default(), None);
    goto(&mut h, "Features");
    h.get_by_label("The feature store cannot be read");
    h.get_by_label_contains("no feature store here");
    h.get_by_label(&format!(
        "saescope analyze --dict {}",
        dict.path().display()
    ));

    // A corrupted features table: the error names the file.
    let z = DictDir::in_run(&run, Z_DICT).features();
    std::fs::write(z.join("features.parquet"), b"not parquet").unwrap();
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        ..Memory::default()
    };
    let mut h = harness(Some(run), memory, None);
    goto(&mut h, "Feature");
    h.get_by_label("The feature store cannot be read");
    h.get_by_label_contains("features.parquet");
}

#[test]
fn unfinished_runs_and_missing_directories_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let h = harness(Some(tmp.path().join("nowhere")), Memory::default(), None);
    h.get_by_label_contains("is not a directory");

    // A harvest that has not finished: the manifest says complete = false.
    let run = tmp.path().join("partial");
    let mut w = saescope_store::RunWriter::create(
        &run,
        saescope_store::synthetic::spec(
            vec![saescope_store::synthetic::hook(
                "blocks.0.hook_resid_post",
                &[4],
                saescope_store::Dtype::F32,
            )],
            8,
        ),
        &saescope_store::WriterOptions::default(),
    )
    .unwrap();
    saescope_store::synthetic::append_until(&mut w, 64, 64, |_| {}).unwrap();
    let h = harness(Some(run.clone()), Memory::default(), None);
    h.get_by_label_contains("the harvest is not finished");
    h.get_by_label(&format!(
        "saescope harvest --out {} --resume",
        run.display()
    ));
    h.get_by_label_contains("no dictionary has been trained");
    drop(w);
}

#[test]
fn the_last_feature_is_reopened() {
    let (_tmp, run) = fixture();
    let memory = Memory {
        run: Some(run.clone()),
        dictionary: Some(RESID_DICT.into()),
        feature: Some(17),
    };
    let mut h = harness(None, memory, None);
    goto(&mut h, "Feature");
    h.get_by_label("Feature 17");
}

#[test]
fn without_a_run_every_view_says_how_to_open_one() {
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = opened.clone();
    let factory: EngineFactory = Box::new(move |_: &Path| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(Words) as Box<dyn PromptEngine>)
    });
    for engine in [None, Some(factory)] {
        let mut h = harness(None, Memory::default(), engine);
        // A prompt given at start waits for a run rather than going to the engine.
        h.state_mut()
            .start_at(Some(View::Overview), Some("tiny words".into()));
        h.run();
        for (view, name) in View::ALL {
            goto(&mut h, name);
            assert_eq!(h.state().view, view);
            for text in ["No run open", "saescope explore RUN", "saescope demo"] {
                assert!(
                    h.query_by_label(text).is_some(),
                    "the {name} view does not say `{text}`"
                );
            }
        }
        // The feature list's keys have no row to move to or open.
        goto(&mut h, "Features");
        h.key_press(egui::Key::ArrowDown);
        h.key_press(egui::Key::Enter);
        h.run();
        assert_eq!(h.state().view, View::Features);
        assert!(h.state().history.is_empty());
    }
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The prompt view with `text` typed in the box and run until the worker answers.
fn run_prompt(h: &mut Harness<'_, Explorer>, text: &str) {
    h.state_mut().prompt.text.clear();
    type_into(h, egui::accesskit::Role::MultilineTextInput, text);
    h.get_by_label("Run").click();
    wait_for_worker(h);
}

#[test]
fn an_engine_that_fails_to_open_says_why_and_the_next_prompt_tries_again() {
    let (_tmp, run) = fixture();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = opened.clone();
    let factory: EngineFactory = Box::new(move |_: &Path| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Err(ExploreError::Engine(
                "model.safetensors: No such file or directory".into(),
            ));
        }
        Ok(Box::new(Words) as Box<dyn PromptEngine>)
    });
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        ..Memory::default()
    };
    let mut h = harness(Some(run.clone()), memory, Some(factory));
    goto(&mut h, "Prompt");
    run_prompt(&mut h, "tiny words");
    h.get_by_label(&format!(
        "Error: cannot open the model with the dictionary in {}: model.safetensors: No such file or directory",
        run.join("dictionaries").join(Z_DICT).display()
    ));

    run_prompt(&mut h, "tiny words");
    h.get_by_label(" tiny");
    h.get_by_label("#5 2.50, q0.50");
    assert!(h.query_by_label_contains("Error:").is_none());
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// An engine that panics on every prompt, and again when it is dropped.
struct Fragile;

impl PromptEngine for Fragile {
    fn view(&mut self, text: &str, _top: usize) -> Result<PromptView, ExploreError> {
        panic!("device-side assert on {text:?}")
    }
    fn attribution(&mut self, _: &str, _: u32, _: usize) -> Result<Attribution, ExploreError> {
        panic!("device-side assert")
    }
    fn steer(&mut self, _: &str, _: u32, _: SteerPush, _: usize) -> Result<Steered, ExploreError> {
        panic!("device-side assert")
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        panic!("freeing the model failed");
    }
}

#[test]
fn an_engine_that_panics_stops_with_its_message_and_a_fresh_one_takes_over() {
    let (_tmp, run) = fixture();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = opened.clone();
    let factory: EngineFactory =
        Box::new(
            move |_: &Path| match count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => panic!("the weights are damaged"),
                1 => Ok(Box::new(Fragile) as Box<dyn PromptEngine>),
                _ => Ok(Box::new(Words) as Box<dyn PromptEngine>),
            },
        );
    let memory = Memory {
        dictionary: Some(Z_DICT.into()),
        ..Memory::default()
    };
    let mut h = harness(Some(run.clone()), memory, Some(factory));
    goto(&mut h, "Prompt");

    // In the factory.
    run_prompt(&mut h, "tiny words");
    h.get_by_label(&format!(
        "Error: the prompt engine stopped while opening the dictionary in {}: the weights are damaged. Run again to start a fresh one.",
        run.join("dictionaries").join(Z_DICT).display()
    ));

    // In a request, by an engine that panics once more as it is dropped.
    run_prompt(&mut h, "tiny words");
    h.get_by_label(
        "Error: the prompt engine stopped on this prompt: device-side assert on \"tiny words\". Run again to start a fresh one.",
    );

    // The worker is still there, and opens a fresh engine.
    run_prompt(&mut h, "tiny words");
    h.get_by_label(" words");
    h.get_by_label("#5 2.50, q0.50");
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// `good` (the contexts table in `dir`) with one byte of its footer changed so that reading
/// feature `f` makes the Parquet decoder panic: the first such change, trying each byte in turn.
fn contexts_that_panic(dir: &Path, good: &[u8], f: u32) -> Vec<u8> {
    let path = dir.join("contexts.parquet");
    let n = good.len();
    let footer_len = u32::from_le_bytes(good[n - 8..n - 4].try_into().unwrap()) as usize;
    for i in n - 8 - footer_len..n - 8 {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff, good[i] ^ 0x40, good[i] ^ 0x08] {
            let mut bad = good.to_vec();
            bad[i] = v;
            std::fs::write(&path, &bad).unwrap();
            let read = std::panic::catch_unwind(|| {
                saescope_store::features::ContextsFile::open(dir).map(|c| c.of(f).is_ok())
            });
            if read.is_err() {
                return bad;
            }
        }
    }
    panic!(
        "no one-byte change to the footer of {} makes the Parquet decoder panic any more",
        path.display()
    );
}

#[test]
fn a_damaged_contexts_table_costs_the_contexts_not_the_feature_list() {
    let (_tmp, run) = fixture();
    let dict = DictDir::in_run(&run, RESID_DICT);
    let path = dict.features().join("contexts.parquet");
    let good = std::fs::read(&path).unwrap();
    let first = SPEC.features as u32 - 1;
    let data_end = good.len()
        - 8
        - u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap()) as usize;
    let mut pages = good.clone();
    pages[data_end / 4..data_end / 2].fill(0xff);
    let cases = [
        ("cut short", good[..good.len() / 2].to_vec()),
        ("damaged pages", pages),
        (
            "a footer the decoder panics on",
            contexts_that_panic(&dict.features(), &good, first),
        ),
    ];
    for (case, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let mut h = harness(Some(run.clone()), Memory::default(), None);
        goto(&mut h, "Features");
        h.get_by_label(&format!(
            "{} of {} features shown; log10 density across features (click a bar to filter):",
            SPEC.features, SPEC.features
        ));
        h.key_press(egui::Key::Enter);
        h.run();
        h.get_by_label(&format!("Feature {first}"));
        let named = format!("contexts: {}: ", path.display());
        assert!(
            h.query_by_label_contains(&named).is_some(),
            "{case}: no error naming {}",
            path.display()
        );
        h.get_by_label(&format!(
            "saescope analyze --dict {}",
            dict.path().display()
        ));
        assert!(
            h.query_by_label("Top activations").is_none(),
            "{case}: the page lists contexts"
        );
    }
}

#[test]
fn prompts_without_a_model_say_how_to_get_one() {
    let (_tmp, run) = fixture();
    let mut h = harness(Some(run.clone()), Memory::default(), None);
    goto(&mut h, "Prompt");
    h.get_by_label("Prompts need a model");
    h.get_by_label(&format!("saescope explore {}", run.display()));
    assert!(
        h.query_by_role(egui::accesskit::Role::MultilineTextInput)
            .is_none()
    );
    assert!(h.query_by_label("Run").is_none());
}

#[test]
fn explanations_show_in_the_list_and_on_the_page_and_are_searched() {
    use saescope_store::explanations::{Evidence, ExplanationRow, write_explanations};
    let (_tmp, run) = fixture();
    let dict = DictDir::in_run(&run, RESID_DICT);
    let row = |latent: u32, explanation: Option<&str>| ExplanationRow {
        latent,
        evidence: Evidence::Activations,
        explanation: explanation.map(str::to_owned),
        explainer: "test".into(),
        settings: "{}".into(),
        prompt_hash: String::new(),
        examples: 0,
        failures: u32::from(explanation.is_none()),
        raw: String::new(),
    };
    let pushed = |latent: u32, explanation: &str| ExplanationRow {
        evidence: Evidence::Effects,
        ..row(latent, Some(explanation))
    };
    write_explanations(
        &dict.explanations_table(),
        &[
            row(7, Some("stripes of a zebra")),
            pushed(7, "says savanna animals"),
            row(9, None),
            pushed(12, "says horse breeds"),
        ],
    )
    .unwrap();
    let mut h = harness(Some(run.clone()), Memory::default(), None);
    goto(&mut h, "Features");
    type_into(&mut h, egui::accesskit::Role::TextInput, "ZEBRA");
    assert_eq!(h.state().list.rows, vec![7]);
    h.get_by_label("stripes of a zebra");
    // Output-side explanations are searched too; one alone fills the column, marked as such.
    h.state_mut().list.search.clear();
    type_into(&mut h, egui::accesskit::Role::TextInput, "HORSE");
    assert_eq!(h.state().list.rows, vec![12]);
    h.get_by_label("pushed: says horse breeds");
    h.state_mut().open_feature(7);
    h.run();
    h.get_by_label("Explanation: stripes of a zebra");
    h.get_by_label("When pushed: says savanna animals");
    h.state_mut().open_feature(9);
    h.run();
    assert!(h.query_by_label_contains("Explanation:").is_none());
    assert!(h.query_by_label_contains("When pushed:").is_none());

    // A damaged explanations table is named on the page; the features still browse.
    std::fs::write(dict.explanations_table(), b"not parquet").unwrap();
    let mut h = harness(Some(run), Memory::default(), None);
    goto(&mut h, "Features");
    h.state_mut().open_feature(7);
    h.run();
    h.get_by_label("Feature 7");
    h.get_by_label_contains("Explanations cannot be read:");
    h.get_by_label_contains("explanations.parquet");
}

/// Answers as a server would: an explanation for even features, an answer without one for odd
/// ones, an error for feature 11 and a panic for feature 13; what it answers it records.
/// Feature 8 waits for a word on `gate` first.
struct Recorder {
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl saescope_gui::FeatureExplainer for Recorder {
    fn describe(&self) -> String {
        "a test explainer".into()
    }
    fn explain(&self, dict: &Path, feature: u32) -> Result<saescope_gui::Explained, ExploreError> {
        use saescope_store::explanations::{ExplanationRow, read_explanations, write_explanations};
        match feature {
            11 => {
                return Err(ExploreError::Engine(
                    "no example windows for feature 11".into(),
                ));
            }
            13 => panic!("explainer broke on 13"),
            8 => self.gate.lock().unwrap().recv().unwrap(),
            _ => {}
        }
        let explanation = feature
            .is_multiple_of(2)
            .then(|| format!("even feature {feature}"));
        let raw = match &explanation {
            Some(e) => format!("EXPLANATION: {e}"),
            None => "I cannot tell".into(),
        };
        let table = DictDir::new(dict).explanations_table();
        let mut rows = read_explanations(&table).unwrap();
        rows.retain(|r| r.latent != feature);
        rows.push(ExplanationRow {
            latent: feature,
            evidence: saescope_store::explanations::Evidence::Activations,
            explanation: explanation.clone(),
            explainer: "test".into(),
            settings: "{}".into(),
            prompt_hash: String::new(),
            examples: 3,
            failures: u32::from(explanation.is_none()),
            raw: raw.clone(),
        });
        write_explanations(&table, &rows).unwrap();
        Ok(saescope_gui::Explained {
            feature,
            explanation,
            raw,
        })
    }
}

#[test]
fn the_explain_button_runs_in_the_background_and_the_page_and_list_read_the_answer() {
    let (_tmp, run) = fixture();
    let memory = Memory {
        dictionary: Some(RESID_DICT.into()),
        feature: Some(8),
        ..Memory::default()
    };
    let (open, gate) = std::sync::mpsc::channel();
    let recorder = Recorder {
        gate: std::sync::Mutex::new(gate),
    };
    let mut app =
        Explorer::new(Some(run), memory, None, None).with_explainer(std::sync::Arc::new(recorder));
    app.settle();
    let mut h = Harness::builder()
        .with_size([1400.0, 1000.0])
        .build_state(|ctx, app: &mut Explorer| app.ui(ctx), app);
    h.run();
    goto(&mut h, "Feature");
    h.get_by_label("Feature 8");
    h.get_by_label("with a test explainer");
    assert!(h.query_by_label_contains("Explanation:").is_none());
    h.get_by_label("Explain").click();
    h.step();
    h.step();
    // The window draws while the explainer works, and a second job waits for the first.
    h.get_by_label("explaining feature 8 with a test explainer…");
    assert!(h.get_by_label("Explain").accesskit_node().is_disabled());
    assert_eq!(h.state().explain_job_feature(), Some(8));
    open.send(()).unwrap();
    wait_for_worker(&mut h);
    h.get_by_label("Explanation: even feature 8");
    h.get_by_label("Explain again");
    // The list reads the new explanation too, and searches it.
    goto(&mut h, "Features");
    type_into(&mut h, egui::accesskit::Role::TextInput, "even feature");
    assert_eq!(h.state().list.rows, vec![8]);

    // An answer without an explanation is said to be one, with its text.
    for (f, says) in [
        (
            9,
            "No explanation in the answer (a counted failure); it began: \"I cannot tell\"",
        ),
        (11, "Error: no example windows for feature 11"),
        (13, "Error: the explainer panicked: explainer broke on 13"),
    ] {
        h.state_mut().open_feature(f);
        h.run();
        h.get_by_label("Explain").click();
        h.step();
        wait_for_worker(&mut h);
        h.get_by_label(says);
        assert!(h.query_by_label_contains("Explanation:").is_none());
        // Another feature's page does not show it.
        h.state_mut().open_feature(8);
        h.run();
        assert!(h.query_by_label(says).is_none());
    }
}

#[test]
fn scores_show_on_the_page_and_sort_and_filter_the_list() {
    use saescope_store::explanations::Evidence;
    use saescope_store::scores::{Control, ScoreRow, write_scores};
    let (_tmp, run) = fixture();
    let dict = DictDir::in_run(&run, RESID_DICT);
    let score = |latent: u32, scorer: &str, control, ba: Option<f64>, auc: Option<f64>| ScoreRow {
        latent,
        scorer: scorer.into(),
        control,
        evidence: Evidence::Activations,
        explanation_of: if control == Control::Shuffled {
            12
        } else {
            latent
        },
        explanation: "x".into(),
        model: "local m".into(),
        settings: "{}".into(),
        windows: 20,
        valid: 18,
        failed: 2,
        balanced_accuracy: ba,
        balanced_accuracy_all: None,
        precision: None,
        recall: None,
        f1: None,
        f1_all: None,
        auc,
        bin_recall: vec![1.0, 0.5, f32::NAN],
        bin_auc: vec![],
        value: None,
        bin_value: vec![],
    };
    write_scores(
        &dict.scores_table(),
        &[
            score(7, "detection", Control::Real, Some(0.9), Some(0.95)),
            score(7, "detection", Control::Shuffled, Some(0.5), Some(0.4)),
            // No AUC: its balanced accuracy stands in. Feature 7: (0.95 + 0.75 + 0.7) / 3 = 0.80.
            score(7, "fuzz", Control::Real, Some(0.75), None),
            score(12, "detection", Control::Real, Some(0.6), Some(0.6)),
            ScoreRow {
                value: Some(0.42),
                bin_recall: vec![],
                bin_value: vec![0.5, 0.25],
                ..score(7, "simulation", Control::Real, None, Some(0.7))
            },
        ],
    )
    .unwrap();
    let mut h = harness(Some(run.clone()), Memory::default(), None);
    goto(&mut h, "Features");
    h.get_by_label("by score").click();
    h.run();
    let rows = h.state().list.rows.clone();
    assert_eq!(&rows[..2], &[7, 12], "scored features first, best first");
    h.get_by_label("0.80");
    // The filter starts at 0.5: the unscored features go.
    h.get_by_label("score at least").click();
    h.run();
    assert_eq!(h.state().list.min_score, Some(0.5));
    assert_eq!(h.state().list.rows, vec![7, 12]);
    h.state_mut().open_feature(7);
    h.run();
    h.get_by_label(
        "detection with its explanation: balanced accuracy 0.90, AUC 0.95, 18 of 20 windows answered",
    );
    h.get_by_label(
        "detection with feature 12's explanation: balanced accuracy 0.50, AUC 0.40, 18 of 20 windows answered",
    );
    h.get_by_label(
        "fuzz with its explanation: balanced accuracy 0.75, AUC -, 18 of 20 windows answered",
    );
    h.get_by_label(
        "simulation with its explanation: balanced accuracy -, AUC 0.70, correlation 0.42, 18 of 20 windows answered",
    );
    h.state_mut().open_feature(9);
    h.run();
    assert!(h.query_by_label_contains("windows answered").is_none());
    // The overview sums the run up: detection's real explanations over features 7 and 12
    // average (0.95 + 0.6) / 2 in AUC; simulation's one correlation is 0.42.
    goto(&mut h, "Overview");
    h.get_by_label("Explanation scores (explanations from activations)");
    h.get_by_label_contains("0.775 [");
    h.get_by_label("0.420 [0.420, 0.420]");
    h.get_by_label("shuffled");

    // A damaged scores table is named on the page; the features still browse.
    std::fs::write(dict.scores_table(), b"not parquet").unwrap();
    let mut h = harness(Some(run), Memory::default(), None);
    goto(&mut h, "Features");
    h.state_mut().open_feature(7);
    h.run();
    h.get_by_label("Feature 7");
    h.get_by_label_contains("Scores cannot be read:");
}

#[test]
fn circuits_view_maps_heads_and_opens_a_heads_features() {
    let (_tmp, run) = fixture();
    let mut h = harness(Some(run), Memory::default(), None);
    goto(&mut h, "Circuits");
    h.get_by_label("ioi");
    let circuit = (0..3)
        .flat_map(|l| (0..SPEC.heads as u32).map(move |hd| fixture::code_score(l, hd)))
        .filter(|s| *s >= 5.0)
        .count();
    h.get_by_label(&format!(
        "|mean-ablation effect| > 0.450 ({circuit} heads): node ROC AUC 0.750 ± 0.071"
    ));
    h.get_by_label("code ranking 2.0 s, ablation sweep 50.0 s");
    // The path-patched pair is listed although sixty pairs score higher, and listed first.
    h.get_by_label("L0H1 -> L2H1  2.5, path-patched -0.125");
    // A label's text is its accessibility value.
    let pairs: Vec<String> = h
        .get_all_by_label_contains(" -> ")
        .map(|n| n.accesskit_node().value().unwrap_or_default())
        .collect();
    assert_eq!(pairs.len(), 51);
    assert_eq!(pairs[0], "L0H1 -> L2H1  2.5, path-patched -0.125");
    h.get_by_label(
        "path patching of 2 heads (chosen by |mean-ablation effect|): 1 of 1 pairs above 0.100, edge ROC AUC -",
    );
    // Only the scored layers are mapped: the model's fourth layer was left out.
    assert_eq!(h.get_all_by_label("L2").count(), 2);
    assert!(h.query_by_label("L3").is_none());
    h.get_by_label_contains("John gave a drink to (1) | model: \" John\", answer \" Mary\", logit difference -0.50 (wrong)");
    // A head of layer 0, where no attention-output dictionary exists.
    h.get_by_label("L0H2").click();
    h.run();
    h.get_by_label("Head L0H2");
    let score = fixture::code_score(0, 2);
    h.get_by_label(&format!("ablation effect {:+.3}", -score / 10.0));
    h.get_by_label_contains("no attention-output dictionary of layer 0");
    // A head of layer 2 opens its features in the heads view.
    h.get_by_label("L2H3").click();
    h.run();
    let score = fixture::code_score(2, 3);
    h.get_by_label(&format!(
        "path-patched effect, own path to the logits {:+.3}",
        -score / 20.0
    ));
    h.get_by_label("Features of head 3 (layer 2)").click();
    h.step();
    // The head's feature store loads in the background; wait for it.
    h.state_mut().settle();
    h.run();
    assert_eq!(h.state().view, View::Heads);
    h.get_by_label("Features of head 3 (layer 2), by share of decoder norm");
}
