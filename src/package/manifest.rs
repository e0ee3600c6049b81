//! `Manifest.json` of an `.mlpackage`: which item is the model, where the weights are.
//! Format: coremltools `modelpackage/src/ModelPackage.cpp` (coreml-format.md §1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only `fileFormatVersion` Core ML's reader accepts (it rejects 1.0.1 and up).
pub const FILE_FORMAT_VERSION: &str = "1.0.0";
/// Item identifier of the model file. Any UUID works; a fixed one keeps our packages
/// byte-reproducible (coremltools draws a random one per save).
pub const MODEL_ITEM_ID: &str = "3D2C8A51-6F0E-4C1B-9A77-0C6E1F3B2A10";
/// Item identifier of the weights directory (fixed for the same reason).
pub const WEIGHTS_ITEM_ID: &str = "8B4E2D7C-1A95-4F63-B0D8-5E7A9C3F1D24";
/// `author` of both items; coremltools finds the weights by (name = "weights", author = this).
pub const AUTHOR: &str = "com.apple.CoreML";

/// One entry of `itemInfoEntries`; Core ML requires all four keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub author: String,
    pub description: String,
    pub name: String,
    pub path: String,
}

/// The whole manifest, field names as on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub file_format_version: String,
    pub item_info_entries: BTreeMap<String, Item>,
    pub root_model_identifier: String,
}

impl Manifest {
    /// The manifest we write: the model item and the weights-directory item.
    pub fn ours() -> Manifest {
        let item = |name: &str, description: &str| Item {
            author: AUTHOR.to_string(),
            description: description.to_string(),
            name: name.to_string(),
            path: format!("{AUTHOR}/{name}"),
        };
        Manifest {
            file_format_version: FILE_FORMAT_VERSION.to_string(),
            item_info_entries: BTreeMap::from([
                (MODEL_ITEM_ID.to_string(), item(super::MODEL_FILE, "CoreML Model Specification")),
                (WEIGHTS_ITEM_ID.to_string(), item(super::WEIGHTS_DIR, "CoreML Model Weights")),
            ]),
            root_model_identifier: MODEL_ITEM_ID.to_string(),
        }
    }

    /// Serialized as coremltools does: sorted keys, 4-space indent, trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        match self.serialize(&mut ser) {
            Ok(()) => {}
            Err(e) => unreachable!("a Manifest of strings always serializes: {e}"),
        }
        String::from_utf8_lossy(&out).into_owned() + "\n"
    }

    /// The root model item.
    pub fn root(&self) -> Option<&Item> {
        self.item_info_entries.get(&self.root_model_identifier)
    }

    /// The weights-directory item, if listed.
    pub fn weights(&self) -> Option<&Item> {
        self.item_info_entries.values().find(|i| i.name == super::WEIGHTS_DIR && i.author == AUTHOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_matches_coremltools_formatting() {
        let j = Manifest::ours().to_json();
        assert!(j.starts_with("{\n    \"fileFormatVersion\": \"1.0.0\",\n    \"itemInfoEntries\": {\n"), "{j}");
        assert!(j.ends_with("}\n"));
        let back: Manifest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, Manifest::ours());
        assert_eq!(back.root().unwrap().path, "com.apple.CoreML/model.mlmodel");
        assert_eq!(back.weights().unwrap().path, "com.apple.CoreML/weights");
    }
}
