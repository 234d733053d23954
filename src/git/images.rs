//! Commits that set image tags in an environment's kustomization: what the image sources of the
//! pipeline (`spec.images`) write when their policy picks a new tag.
//!
//! One commit carries every image of an update (a group's images move together), edits only the
//! lines of the `images:` entries it sets (comments and layout stay), and is pushed as
//! promotion commits are: with the fetched tip as lease, and redone on the new tip when someone
//! pushed first. Trailers name each image source and what it set:
//!
//! ```text
//! Set image web to 1.4.2 in dev
//!
//! Stagehand-Image-Source: web registry.example.com/shop/web:1.4.2@sha256:3f1c…
//! ```
//!
//! Re-running an update is safe without a ledger: an environment whose kustomization already
//! says what the update would write gets no commit ([`Outcome::NoChange`]).

use gix::ObjectId;

use super::promote::Options;
use super::revision::{self, Location};
use super::write::{self, Attempt, Pushed, Refused, WriteError};
use super::{Repository, fetch, push, yaml_edit};
use crate::pipeline::Pipeline;
use crate::render::fs::FileSystem;
use crate::render::kustomization::FILE_NAMES as KUSTOMIZATION_FILES;
use crate::yaml::written::Scalar;

/// Trailer naming an image source and the reference it set: `<source> <repository>:<tag>`,
/// with `@<digest>` when the source pins digests. One per image of the commit.
pub const IMAGE_SOURCE: &str = "Stagehand-Image-Source";
/// Trailer naming the group whose images the commit moves together.
pub const IMAGE_GROUP: &str = "Stagehand-Image-Group";

/// What one image source sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetImage {
    /// The image source (`spec.images[].name`), for the trailer.
    pub source: String,
    /// The `images[].name` of the kustomization entry to set.
    pub kustomize_name: String,
    /// The repository, such as `registry.example.com/shop/web`: the trailer's reference, and
    /// the `newName` of an entry the kustomization does not have yet (when it is not the
    /// kustomize name itself).
    pub repository: String,
    /// The chosen tag (`newTag`).
    pub tag: String,
    /// The manifest digest (`digest`) when the source pins digests; without, any digest the
    /// entry has is removed, since it would keep the old image running under the new tag.
    pub digest: Option<String>,
}

impl SetImage {
    /// `<repository>:<tag>[@<digest>]`.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}:{}@{digest}", self.repository, self.tag),
            None => format!("{}:{}", self.repository, self.tag),
        }
    }
}

/// The images an update sets in one environment, in one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUpdate {
    /// The environment whose kustomization changes.
    pub environment: String,
    /// The group the images move with, if any.
    pub group: Option<String>,
    /// At least one.
    pub images: Vec<SetImage>,
}

/// What an update did; each case is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new commit is on the remote branch.
    Pushed {
        /// The new commit.
        commit: ObjectId,
        /// The branch tip it was built on.
        parent: ObjectId,
        /// Pushes it took, 1 when nobody pushed in between.
        attempts: u32,
    },
    /// The kustomization already says what the update would write.
    NoChange {
        /// The branch tip.
        commit: ObjectId,
    },
}

impl From<Pushed> for Outcome {
    fn from(pushed: Pushed) -> Self {
        let Pushed {
            commit,
            parent,
            attempts,
        } = pushed;
        Self::Pushed {
            commit,
            parent,
            attempts,
        }
    }
}

/// Why an image update could not be committed.
#[derive(Debug, thiserror::Error)]
// Each variant is described by its message, and its fields by the names the message uses.
#[allow(missing_docs)]
pub enum Error {
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error(transparent)]
    Revision(#[from] revision::Error),
    #[error(
        "image update of environment {environment:?}: {field} {value:?} must be one non-empty line without spaces"
    )]
    InvalidValue {
        environment: String,
        field: &'static str,
        value: String,
    },
    #[error("{path}: no kustomization at {commit} for environment {environment:?}")]
    MissingKustomization {
        environment: String,
        commit: ObjectId,
        path: String,
    },
    #[error("{path} at {commit}: cannot read it")]
    Read {
        path: String,
        commit: ObjectId,
        #[source]
        source: crate::render::fs::Error,
    },
    #[error("{path} at {commit}")]
    Edit {
        path: String,
        commit: ObjectId,
        #[source]
        source: yaml_edit::Error,
    },
    #[error("not pushed: {reason}")]
    Fenced { reason: String },
    #[error(transparent)]
    Push(#[from] push::Error),
    /// Declined by the remote, or others kept pushing first.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Sign(#[from] super::sign::SignError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Repository {
    /// Whether `update` would change `environment`'s kustomization at its branch tip in the
    /// cache (not fetched here): the cheap look before [`Repository::set_images`] fetches.
    pub fn would_change(&self, pipeline: &Pipeline, update: &ImageUpdate) -> Result<bool, Error> {
        check_values(update)?;
        let location = Location::of(pipeline, &update.environment)?;
        let tip = self.branch_tip(&location.branch)?;
        let (path, text) = self.kustomization(&update.environment, &location, tip)?;
        let edited = edit(&text, &update.images).map_err(|source| Error::Edit {
            path,
            commit: tip,
            source,
        })?;
        Ok(edited != text)
    }

    /// The `images:` entries of the kustomization in `location` at `commit`: each entry's
    /// name and the `name:tag@digest` it makes; empty when the directory has no kustomization.
    pub fn image_references(
        &self,
        location: &Location,
        commit: ObjectId,
    ) -> Result<Vec<(String, String)>, Error> {
        let tree = self.tree(commit)?;
        let Some((path, text)) = find_kustomization(&tree, location, commit)? else {
            return Ok(Vec::new());
        };
        let images = yaml_edit::images(&text).map_err(|source| Error::Edit {
            path,
            commit,
            source,
        })?;
        Ok(images
            .iter()
            .map(|image| (yaml_edit::image_name(image).to_owned(), reference_of(image)))
            .collect())
    }

    /// Carries out `update`: fetch, edit the environment's kustomization on its branch tip,
    /// commit, ask `fence` whether this process may still write, push with that tip as the
    /// lease; if someone pushed first, fetch and redo on top of theirs, at most
    /// `options.max_attempts` times. Blocking: call it from `spawn_blocking` in async code.
    pub fn set_images(
        &self,
        pipeline: &Pipeline,
        update: &ImageUpdate,
        options: &Options,
        fence: &dyn Fn() -> Result<(), String>,
    ) -> Result<Outcome, Error> {
        check_values(update)?;
        let location = Location::of(pipeline, &update.environment)?;
        let what = format!("the image update of {}", update.environment);
        self.land(&location.branch, options.max_attempts, &what, |tip| {
            let (path, text) = self.kustomization(&update.environment, &location, tip)?;
            let edited = edit(&text, &update.images).map_err(|source| Error::Edit {
                path: path.clone(),
                commit: tip,
                source,
            })?;
            if edited == text {
                return Ok(Attempt::Done(Outcome::NoChange { commit: tip }));
            }
            let repo = self.repo();
            let tree = write::tree_with::<Error>(&repo, tip, [(&path, &edited)])?;
            let commit = write::commit::<Error>(
                &repo,
                options,
                message(update),
                tree,
                tip,
                "the image commit",
            )?;
            fence().map_err(|reason| Error::Fenced { reason })?;
            Ok(Attempt::Push(commit))
        })
    }

    /// The kustomization file of `environment` at `tip`: its repository path and text.
    fn kustomization(
        &self,
        environment: &str,
        location: &Location,
        tip: ObjectId,
    ) -> Result<(String, String), Error> {
        let tree = self.tree(tip)?;
        find_kustomization(&tree, location, tip)?.ok_or_else(|| Error::MissingKustomization {
            environment: environment.to_owned(),
            commit: tip,
            path: location.file(KUSTOMIZATION_FILES[0]),
        })
    }
}

/// The first kustomization file name present in `location`'s directory, with its text.
fn find_kustomization(
    tree: &super::TreeFs,
    location: &Location,
    commit: ObjectId,
) -> Result<Option<(String, String)>, Error> {
    for name in KUSTOMIZATION_FILES {
        let path = location.file(name);
        let bytes = match tree.read_file(&path) {
            Ok(bytes) => bytes,
            Err(crate::render::fs::Error::NotFound { .. }) => continue,
            Err(source) => {
                return Err(Error::Read {
                    path,
                    commit,
                    source,
                });
            }
        };
        // YAML that is not UTF-8 is not YAML; refuse it rather than edit a lossy copy.
        let text = String::from_utf8(bytes).map_err(|e| Error::Edit {
            path: path.clone(),
            commit,
            source: yaml_edit::Error::Syntax {
                message: e.to_string(),
            },
        })?;
        return Ok(Some((path, text)));
    }
    Ok(None)
}

/// `name[:tag][@digest]` of an `images:` entry as kustomize makes it: `newName` replaces the
/// name, and a tag suffix applies only without a new tag.
fn reference_of(image: &yaml_edit::Image) -> String {
    let text = |s: &Option<Scalar>| s.as_ref().map(|s| s.text.clone());
    let mut reference =
        text(&image.new_name).unwrap_or_else(|| yaml_edit::image_name(image).to_owned());
    match (text(&image.new_tag), text(&image.tag_suffix)) {
        (Some(tag), _) => reference.push_str(&format!(":{tag}")),
        (None, Some(suffix)) => reference.push_str(&format!(":{suffix}")),
        (None, None) => {}
    }
    if let Some(digest) = text(&image.digest) {
        reference.push_str(&format!("@{digest}"));
    }
    reference
}

/// `text` with each of `images` set: `newTag`, and `digest` or none; `newName` and
/// `tagSuffix` as they were (an entry that is missing gets the repository as `newName` when
/// that is not its name). Values already as wanted are written back as they were, so an update
/// that changes nothing returns `text` itself.
fn edit(text: &str, images: &[SetImage]) -> Result<String, yaml_edit::Error> {
    let current = yaml_edit::images(text)?;
    let plain = yaml_edit::string;
    let wanted: Vec<yaml_edit::Image> = images
        .iter()
        .map(|set| {
            let existing = current
                .iter()
                .find(|i| yaml_edit::image_name(i) == set.kustomize_name);
            let new_name = match existing {
                Some(entry) => entry.new_name.clone(),
                None => (set.repository != set.kustomize_name).then(|| plain(&set.repository)),
            };
            yaml_edit::Image {
                name: Some(
                    existing
                        .and_then(|e| e.name.clone())
                        .unwrap_or_else(|| plain(&set.kustomize_name)),
                ),
                new_name,
                new_tag: Some(plain(&set.tag)),
                tag_suffix: existing.and_then(|e| e.tag_suffix.clone()),
                digest: set.digest.as_deref().map(plain),
            }
        })
        .collect();
    yaml_edit::set_images(text, &wanted)
}

/// Tags, digests and names go into one trailer line each, separated by spaces.
fn check_values(update: &ImageUpdate) -> Result<(), Error> {
    let one_word = |field: &'static str, value: &str| {
        if value.is_empty() || value.contains(char::is_whitespace) {
            Err(Error::InvalidValue {
                environment: update.environment.clone(),
                field,
                value: value.to_owned(),
            })
        } else {
            Ok(())
        }
    };
    for image in &update.images {
        one_word("source", &image.source)?;
        one_word("repository", &image.repository)?;
        one_word("tag", &image.tag)?;
        if let Some(digest) = &image.digest {
            one_word("digest", digest)?;
        }
    }
    if let Some(group) = &update.group {
        one_word("group", group)?;
    }
    Ok(())
}

fn message(update: &ImageUpdate) -> String {
    let title = match (&update.group, &update.images[..]) {
        (None, [one]) => format!(
            "Set image {} to {} in {}",
            one.source, one.tag, update.environment
        ),
        (group, images) => {
            let list: Vec<String> = images
                .iter()
                .map(|i| format!("{} {}", i.source, i.tag))
                .collect();
            match group {
                Some(group) => format!(
                    "Set images of group {group} in {}: {}",
                    update.environment,
                    list.join(", ")
                ),
                None => format!("Set images in {}: {}", update.environment, list.join(", ")),
            }
        }
    };
    let mut text = format!("{title}\n\n");
    if let Some(group) = &update.group {
        text.push_str(&format!("{IMAGE_GROUP}: {group}\n"));
    }
    for image in &update.images {
        text.push_str(&format!(
            "{IMAGE_SOURCE}: {} {}\n",
            image.source,
            image.reference()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(source: &str, name: &str, tag: &str, digest: Option<&str>) -> SetImage {
        SetImage {
            source: source.into(),
            kustomize_name: name.into(),
            repository: format!("registry.example.com/shop/{source}"),
            tag: tag.into(),
            digest: digest.map(Into::into),
        }
    }

    const KUSTOMIZATION: &str = "\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [app.yaml]
# the images CI moves
images:
  - name: registry.example.com/shop/web # the shop
    newTag: \"1.0.0\"
    digest: sha256:0000
  - name: api
    newName: registry.example.com/shop/api
    newTag: 2.0.0
";

    #[test]
    fn a_tag_is_set_keeping_comments_quotes_and_the_other_entries() {
        let edited = edit(
            KUSTOMIZATION,
            &[set(
                "web",
                "registry.example.com/shop/web",
                "1.1.0",
                Some("sha256:1111"),
            )],
        )
        .expect("edits");
        assert_eq!(
            edited,
            KUSTOMIZATION
                .replace("newTag: \"1.0.0\"", "newTag: \"1.1.0\"")
                .replace("sha256:0000", "sha256:1111")
        );
    }

    #[test]
    fn without_pinning_a_stale_digest_is_removed_and_new_names_stay() {
        let edited = edit(
            KUSTOMIZATION,
            &[
                set("web", "registry.example.com/shop/web", "1.1.0", None),
                set("api", "api", "2.1.0", None),
            ],
        )
        .expect("edits");
        assert!(!edited.contains("sha256:0000"), "{edited}");
        assert!(
            edited.contains("    newName: registry.example.com/shop/api\n    newTag: 2.1.0\n"),
            "{edited}"
        );
        assert!(edited.contains("# the images CI moves"), "{edited}");
    }

    #[test]
    fn an_entry_already_as_wanted_is_no_change_and_a_missing_one_is_appended_with_its_repository() {
        let same = edit(
            KUSTOMIZATION,
            &[set(
                "web",
                "registry.example.com/shop/web",
                "1.0.0",
                Some("sha256:0000"),
            )],
        )
        .expect("edits");
        assert_eq!(same, KUSTOMIZATION);
        let added = edit(KUSTOMIZATION, &[set("worker", "worker", "0.1.0", None)]).expect("edits");
        assert!(
            added.ends_with(
                "  - name: worker\n    newName: registry.example.com/shop/worker\n    newTag: 0.1.0\n"
            ),
            "{added}"
        );
    }

    #[test]
    fn the_message_names_the_group_and_every_source_with_what_it_set() {
        let update = ImageUpdate {
            environment: "dev".into(),
            group: Some("shop".into()),
            images: vec![
                set("web", "web", "1.1.0", Some("sha256:1111")),
                set("api", "api", "2.1.0", None),
            ],
        };
        assert_eq!(
            message(&update),
            "Set images of group shop in dev: web 1.1.0, api 2.1.0\n\n\
             Stagehand-Image-Group: shop\n\
             Stagehand-Image-Source: web registry.example.com/shop/web:1.1.0@sha256:1111\n\
             Stagehand-Image-Source: api registry.example.com/shop/api:2.1.0\n"
        );
        let mut bad = update.clone();
        bad.images[0].tag = "1.1.0\nStagehand-Promotion: x".into();
        assert!(matches!(
            check_values(&bad),
            Err(Error::InvalidValue { field: "tag", .. })
        ));
    }

    #[test]
    fn references_read_as_kustomize_makes_them() {
        let images = yaml_edit::images(KUSTOMIZATION).expect("reads");
        let refs: Vec<String> = images.iter().map(reference_of).collect();
        assert_eq!(
            refs,
            [
                "registry.example.com/shop/web:1.0.0@sha256:0000",
                "registry.example.com/shop/api:2.0.0"
            ]
        );
    }
}
