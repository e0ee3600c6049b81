//! Classifier packages as coremltools' `ClassifierConfig` writes them: the program ends in a
//! `classify` op reading the fp32 probabilities and the class labels (a list literal bound to
//! `classes`); it returns the top label (a string or int64 scalar) and a label → probability
//! dictionary, described as `stringType`/`int64Type` and `dictionaryType` features with
//! `predictedFeatureName` and `predictedProbabilitiesName` set. The IR keeps only tensors: the
//! op is stripped when a package is read (into `Model::classifier`) and appended when one is
//! written, so the interpreter runs the program to the probabilities. Facts: coremltools 9.0
//! `backend/mil/load.py` (`_add_classify_op`) and `ops/defs/iOS15/classify.py`.

use std::collections::BTreeMap;

use super::proto::core_ml::specification as spec;
use spec::mil_spec as pb;

use crate::mil::{Classifier, Labels};

/// The op type.
const CLASSIFY: &str = "classify";
/// Suffix of the probabilities dictionary's name after the top label's (`classLabel_probs`).
pub const PROBS_SUFFIX: &str = "_probs";
/// Most labels a classifier may have (ImageNet-21k has 21 841; a list literal is held in memory).
const MAX_LABELS: usize = 1 << 20;

fn tensor_type(data_type: pb::DataType) -> pb::ValueType {
    pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(pb::TensorType { data_type: data_type as i32, rank: 0, dimensions: Vec::new(), attributes: BTreeMap::new() })),
    }
}

fn label_dtype(labels: &Labels) -> pb::DataType {
    match labels {
        Labels::Names(_) => pb::DataType::String,
        Labels::Ids(_) => pb::DataType::Int64,
    }
}

/// The `classify` op for `c`, reading `c.probabilities`.
pub fn op(c: &Classifier) -> pb::Operation {
    use pb::tensor_value::{RepeatedLongInts, RepeatedStrings, Value as V};
    let scalar = |v: V| pb::Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(label_dtype(&c.labels))),
        value: Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue { value: Some(v) })),
        })),
    };
    let values: Vec<pb::Value> = match &c.labels {
        Labels::Names(v) => v.iter().map(|s| scalar(V::Strings(RepeatedStrings { values: vec![s.clone()] }))).collect(),
        Labels::Ids(v) => v.iter().map(|&i| scalar(V::LongInts(RepeatedLongInts { values: vec![i] }))).collect(),
    };
    let length = pb::Dimension { dimension: Some(pb::dimension::Dimension::Constant(pb::dimension::ConstantDimension { size: values.len() as u64 })) };
    let classes = pb::Value {
        doc_string: String::new(),
        r#type: Some(pb::ValueType {
            r#type: Some(pb::value_type::Type::ListType(Box::new(pb::ListType { r#type: Some(Box::new(tensor_type(label_dtype(&c.labels)))), length: Some(length) }))),
        }),
        value: Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue { value: Some(pb::value::immediate_value::Value::List(pb::ListValue { values })) })),
    };
    let arg = |b: pb::argument::binding::Binding| pb::Argument { arguments: vec![pb::argument::Binding { binding: Some(b) }] };
    let dict = pb::ValueType {
        r#type: Some(pb::value_type::Type::DictionaryType(Box::new(pb::DictionaryType {
            key_type: Some(Box::new(tensor_type(label_dtype(&c.labels)))),
            value_type: Some(Box::new(tensor_type(pb::DataType::Float64))),
        }))),
    };
    let name = pb::Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(pb::DataType::String)),
        value: Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue { value: Some(V::Strings(RepeatedStrings { values: vec![CLASSIFY.to_string()] })) })),
        })),
    };
    pb::Operation {
        r#type: CLASSIFY.to_string(),
        inputs: BTreeMap::from([
            ("probabilities".to_string(), arg(pb::argument::binding::Binding::Name(c.probabilities.clone()))),
            ("classes".to_string(), arg(pb::argument::binding::Binding::Value(classes))),
        ]),
        outputs: vec![
            pb::NamedValueType { name: c.predicted.clone(), r#type: Some(tensor_type(label_dtype(&c.labels))) },
            pb::NamedValueType { name: format!("{}{PROBS_SUFFIX}", c.predicted), r#type: Some(dict) },
        ],
        blocks: Vec::new(),
        attributes: BTreeMap::from([("name".to_string(), name)]),
    }
}

/// The two output features of `c`: the top label and the probabilities dictionary.
pub fn features(c: &Classifier, descriptions: &BTreeMap<String, String>) -> [spec::FeatureDescription; 2] {
    use spec::feature_type::Type;
    let (label, key) = match c.labels {
        Labels::Names(_) => (Type::StringType(spec::StringFeatureType {}), spec::dictionary_feature_type::KeyType::StringKeyType(spec::StringFeatureType {})),
        Labels::Ids(_) => (Type::Int64Type(spec::Int64FeatureType {}), spec::dictionary_feature_type::KeyType::Int64KeyType(spec::Int64FeatureType {})),
    };
    let feature = |name: String, ty: Type| spec::FeatureDescription {
        short_description: descriptions.get(&name).cloned().unwrap_or_default(),
        name,
        r#type: Some(spec::FeatureType { r#type: Some(ty), is_optional: false }),
    };
    [
        feature(c.predicted.clone(), label),
        feature(format!("{}{PROBS_SUFFIX}", c.predicted), Type::DictionaryType(spec::DictionaryFeatureType { key_type: Some(key) })),
    ]
}

/// Removes a final `classify` op from `block` (main's), making its probabilities input the
/// block's output in place of the op's two outputs; returns what it said, or `None` when the
/// block does not end in one.
pub fn strip(block: &mut pb::Block) -> Result<Option<Classifier>, String> {
    if block.operations.last().is_none_or(|o| o.r#type != CLASSIFY) {
        return Ok(None);
    }
    let op = block.operations.pop().ok_or("no classify op")?;
    let binding = |p: &str| op.inputs.get(p).and_then(|a| a.arguments.first()).and_then(|b| b.binding.as_ref());
    let Some(pb::argument::binding::Binding::Name(probabilities)) = binding("probabilities") else {
        return Err("classify: `probabilities` is not a value name".into());
    };
    let Some(pb::argument::binding::Binding::Value(classes)) = binding("classes") else {
        return Err("classify: `classes` is not a literal list".into());
    };
    let Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue { value: Some(pb::value::immediate_value::Value::List(list)) })) = &classes.value else {
        return Err("classify: `classes` is not a list value".into());
    };
    if list.values.len() > MAX_LABELS {
        return Err(format!("classify: {} labels, more than {MAX_LABELS}", list.values.len()));
    }
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    for v in &list.values {
        use pb::tensor_value::Value as V;
        match &v.value {
            Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue { value: Some(pb::value::immediate_value::Value::Tensor(t)) })) => match &t.value {
                Some(V::Strings(s)) if s.values.len() == 1 => names.push(s.values[0].clone()),
                Some(V::LongInts(i)) if i.values.len() == 1 => ids.push(i.values[0]),
                Some(V::Ints(i)) if i.values.len() == 1 => ids.push(i64::from(i.values[0])),
                _ => return Err("classify: a label is neither one string nor one integer".into()),
            },
            _ => return Err("classify: a label is not an immediate value".into()),
        }
    }
    let labels = match (names.is_empty(), ids.is_empty()) {
        (false, true) => Labels::Names(names),
        (true, false) => Labels::Ids(ids),
        _ => return Err("classify: labels mix strings and integers, or there are none".into()),
    };
    let [label_out, probs_out] = op.outputs.as_slice() else { return Err("classify: expected two outputs".into()) };
    if !block.outputs.contains(&label_out.name) || !block.outputs.contains(&probs_out.name) {
        return Err("classify: its outputs are not the program's".into());
    }
    let mut outputs = vec![probabilities.clone()];
    outputs.extend(block.outputs.iter().filter(|o| **o != label_out.name && **o != probs_out.name && *o != probabilities).cloned());
    block.outputs = outputs;
    Ok(Some(Classifier { labels, probabilities: probabilities.clone(), predicted: label_out.name.clone() }))
}
