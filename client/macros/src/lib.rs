//! Procedural macros of the `shoal` SDK. Use them through `shoal`
//! (`#[shoal::remote]`, `#[shoal::main]`), not directly.

mod actor;

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, FnArg, ItemFn, Lit, LitStr, Meta, Pat, ReturnType, Token, Type};

struct RemoteOptions {
    num_cpus: Option<f64>,
    resources: Vec<(String, f64)>,
    max_retries: Option<u32>,
    retry_exceptions: bool,
    name: Option<LitStr>,
    num_returns: Option<usize>,
}

pub(crate) fn number(e: &Expr) -> syn::Result<f64> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => i.base10_parse::<f64>(),
            Lit::Float(f) => f.base10_parse::<f64>(),
            _ => Err(syn::Error::new_spanned(e, "expected a number")),
        },
        _ => Err(syn::Error::new_spanned(e, "expected a number literal")),
    }
}

impl Parse for RemoteOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut o = RemoteOptions { num_cpus: None, resources: Vec::new(), max_retries: None, retry_exceptions: false, name: None, num_returns: None };
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated(input)?;
        for m in metas {
            match &m {
                Meta::NameValue(nv) if nv.path.is_ident("num_cpus") => {
                    let v = number(&nv.value)?;
                    if v < 0.0 {
                        return Err(syn::Error::new_spanned(&nv.value, "num_cpus must be >= 0"));
                    }
                    o.num_cpus = Some(v);
                }
                Meta::NameValue(nv) if nv.path.is_ident("max_retries") => {
                    o.max_retries = Some(number(&nv.value)? as u32);
                }
                Meta::NameValue(nv) if nv.path.is_ident("num_returns") => {
                    let k = number(&nv.value)?;
                    if k < 1.0 || k.fract() != 0.0 {
                        return Err(syn::Error::new_spanned(&nv.value, "num_returns must be a whole number >= 1"));
                    }
                    o.num_returns = Some(k as usize);
                }
                Meta::NameValue(nv) if nv.path.is_ident("retry_exceptions") || nv.path.is_ident("retry_on_panic") => match &nv.value {
                    Expr::Lit(l) => match &l.lit {
                        Lit::Bool(b) => o.retry_exceptions = b.value,
                        _ => return Err(syn::Error::new_spanned(&nv.value, "retry_exceptions must be true or false")),
                    },
                    _ => return Err(syn::Error::new_spanned(&nv.value, "retry_exceptions must be true or false")),
                },
                Meta::NameValue(nv) if nv.path.is_ident("name") => o.name = Some(string(&nv.value, "name")?),
                Meta::List(list) if list.path.is_ident("resources") => o.resources.extend(resources(list)?),
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "unknown option; expected num_cpus = N, resources(name = N, ...), max_retries = N, retry_exceptions = true, num_returns = K or name = \"...\"",
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// A string literal option (`name = "..."`).
pub(crate) fn string(e: &Expr, what: &str) -> syn::Result<LitStr> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(s) => Ok(s.clone()),
            _ => Err(syn::Error::new_spanned(e, format!("{what} must be a string"))),
        },
        _ => Err(syn::Error::new_spanned(e, format!("{what} must be a string"))),
    }
}

/// `resources(gpu = 1, ssd = 0.5)`: names and amounts (>= 0).
pub(crate) fn resources(list: &syn::MetaList) -> syn::Result<Vec<(String, f64)>> {
    let inner = list.parse_args_with(Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated)?;
    let mut out = Vec::new();
    for nv in inner {
        let key = nv.path.get_ident().ok_or_else(|| syn::Error::new_spanned(&nv.path, "expected a resource name"))?.to_string();
        let v = number(&nv.value)?;
        if v < 0.0 {
            return Err(syn::Error::new_spanned(&nv.value, "resource amounts must be >= 0"));
        }
        out.push((key, v));
    }
    Ok(out)
}

/// The item type of a generator function's return type: `impl
/// Iterator<Item = X>` gives `(X, false)`, `impl Stream<Item = X>` gives
/// `(X, true)`.
fn generator_item(t: &Type) -> Option<(Type, bool)> {
    let Type::ImplTrait(it) = t else { return None };
    for b in &it.bounds {
        let syn::TypeParamBound::Trait(tb) = b else { continue };
        let Some(seg) = tb.path.segments.last() else { continue };
        let is_stream = match seg.ident.to_string().as_str() {
            "Iterator" => false,
            "Stream" => true,
            _ => continue,
        };
        let syn::PathArguments::AngleBracketed(ab) = &seg.arguments else { continue };
        for a in &ab.args {
            if let syn::GenericArgument::AssocType(at) = a
                && at.ident == "Item"
            {
                return Some((at.ty.clone(), is_stream));
            }
        }
    }
    None
}

/// The setters of a remote function's per-call `Options` (the same for
/// plain functions and generators).
fn option_setters() -> proc_macro2::TokenStream {
    quote! {
        /// Retries of this call when its worker dies (overrides the function's).
        pub fn max_retries(mut self, n: u32) -> Self {
            self.0.max_retries = ::core::option::Option::Some(n);
            self
        }

        /// CPUs this call holds while it runs (overrides the function's).
        pub fn num_cpus(mut self, n: f64) -> Self {
            self.0.num_cpus = ::core::option::Option::Some(n);
            self
        }

        /// Custom resources this call holds while it runs, e.g.
        /// `&[("gpu", 1.0)]` (replaces the function's).
        pub fn resources(mut self, r: &[(&str, f64)]) -> Self {
            self.0.resources = ::core::option::Option::Some(r.iter().map(|(k, v)| (k.to_string(), *v)).collect());
            self
        }

        /// Whether a panic of this call is retried (within `max_retries`),
        /// not only a worker death (overrides the function's).
        pub fn retry_exceptions(mut self, yes: bool) -> Self {
            self.0.retry_exceptions = ::core::option::Option::Some(yes);
            self
        }

        /// The same as [`retry_exceptions`](Self::retry_exceptions).
        pub fn retry_on_panic(self, yes: bool) -> Self {
            self.retry_exceptions(yes)
        }

        /// Runs the call on `node` only (Ray's node affinity, `soft=False`):
        /// it waits for room there, and fails as `Unschedulable` if the
        /// node is gone. Node ids: `shoal::cluster_status_blocking()?.alive_nodes()`.
        pub fn on_node(mut self, node: ::shoal::NodeId) -> Self {
            self.0.placement = ::shoal::Placement::Node { node, soft: false };
            self
        }

        /// Runs the call on `node` if it has room now, else anywhere
        /// (Ray's node affinity with `soft=True`).
        pub fn prefer_node(mut self, node: ::shoal::NodeId) -> Self {
            self.0.placement = ::shoal::Placement::Node { node, soft: true };
            self
        }

        /// Spreads calls over the nodes with room, ignoring where their
        /// inputs are (Ray's `"SPREAD"` strategy).
        pub fn spread(mut self) -> Self {
            self.0.placement = ::shoal::Placement::Spread;
            self
        }
    }
}

/// Turns a function into a remote function. See `shoal::remote`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let opts = syn::parse_macro_input!(attr as RemoteOptions);
    let func = syn::parse_macro_input!(item as ItemFn);
    match expand_remote(opts, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_remote(opts: RemoteOptions, func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(&sig.generics, "remote functions cannot be generic: each needs one registered name and concrete types"));
    }
    let ident = &sig.ident;
    let vis = &func.vis;
    let is_async = sig.asyncness.is_some();
    let mut arg_names = Vec::new();
    let mut arg_types: Vec<Type> = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(r) => return Err(syn::Error::new_spanned(r, "remote functions cannot take self")),
            FnArg::Typed(pt) => {
                if let Type::Reference(r) = &*pt.ty {
                    return Err(syn::Error::new_spanned(
                        r,
                        "remote function parameters must be owned, serializable types (e.g. String, Vec<u8>), not references",
                    ));
                }
                let name = match &*pt.pat {
                    Pat::Ident(pi) => pi.ident.clone(),
                    _ => format_ident!("arg{}", i),
                };
                arg_names.push(name);
                arg_types.push((*pt.ty).clone());
            }
        }
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let n = arg_names.len();
    let indices: Vec<usize> = (0..n).collect();
    let name_expr = match &opts.name {
        Some(s) => quote!(#s),
        None => quote!(::core::concat!(::core::module_path!())),
    };
    let num_cpus = opts.num_cpus.unwrap_or(1.0);
    let max_retries = opts.max_retries.unwrap_or(3);
    let retry_exceptions = opts.retry_exceptions;
    let res_names: Vec<&String> = opts.resources.iter().map(|(k, _)| k).collect();
    let res_amounts: Vec<f64> = opts.resources.iter().map(|(_, v)| *v).collect();
    let call = if is_async { quote!(::shoal::__private::block_on(super::#ident(#(#arg_names),*))) } else { quote!(super::#ident(#(#arg_names),*)) };
    let doc = format!("Remote form of [`{ident}`](fn@super::{ident}): `{ident}::remote(..)` runs it on the cluster and returns an `ObjectRef` at once.");
    let setters = option_setters();
    let name_and_meta = quote! {
        /// Registered name of the function (stable across builds of the same source).
        pub const NAME: &str = #name_expr;

        /// How the cluster runs this function: its name, resources and retries.
        pub static META: ::shoal::__private::FunctionMeta = ::shoal::__private::FunctionMeta::new(
            NAME,
            #num_cpus,
            &[#((#res_names, #res_amounts)),*],
            #max_retries,
            #retry_exceptions,
        );
    };
    if let Some((item, is_stream)) = generator_item(&ret) {
        if opts.num_returns.is_some() {
            return Err(syn::Error::new_spanned(&sig.output, "a generator function streams its items: num_returns does not apply"));
        }
        let run = if is_stream { quote!(::shoal::__private::run_stream) } else { quote!(::shoal::__private::run_generator) };
        let doc = format!(
            "Remote form of the generator [`{ident}`](fn@super::{ident}): `{ident}::remote(..)` starts it on the cluster and returns an `ObjectRefGenerator` of its items at once."
        );
        let slice_ident = format_ident!("__SHOAL_REGISTRATION_{}", ident.to_string().to_uppercase(), span = Span::call_site());
        return Ok(quote! {
            #func

            #[doc = #doc]
            #[allow(non_snake_case, clippy::all, unused_imports)]
            #vis mod #ident {
                use super::*;

                #name_and_meta

                #[doc(hidden)]
                pub fn __invoke(args: &[::shoal::__private::Bytes]) -> ::core::result::Result<::shoal::__private::Encoded, ::shoal::__private::InvokeError> {
                    ::shoal::__private::check_arity(args, #n)?;
                    #( let #arg_names: #arg_types = ::shoal::__private::decode_arg(args, #indices)?; )*
                    let out = #call;
                    #run::<#item>(out)
                }

                #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
                #[linkme(crate = ::shoal::__private::linkme)]
                static #slice_ident: ::shoal::__private::RemoteFunction = ::shoal::__private::RemoteFunction { name: NAME, invoke: __invoke };

                /// Starts the generator on the cluster; its items arrive, in order, while it runs.
                /// Each argument may be a value or an `ObjectRef` of the parameter's type.
                pub fn remote(#(#arg_names: impl ::shoal::IntoArg<#arg_types>),*) -> ::shoal::ObjectRefGenerator<#item> {
                    ::shoal::__private::submit_generator(&META, ::shoal::CallOptions::default(), ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*])
                }

                /// Per-call options (`num_cpus`, `resources`, `max_retries`,
                /// `retry_exceptions`), then `.remote(..)`.
                pub fn options() -> Options {
                    Options(::shoal::CallOptions::default())
                }

                /// Options for one call; see [`options`].
                pub struct Options(::shoal::CallOptions);

                impl Options {
                    #setters

                    /// Starts the generator with these options.
                    pub fn remote(self, #(#arg_names: impl ::shoal::IntoArg<#arg_types>),*) -> ::shoal::ObjectRefGenerator<#item> {
                        ::shoal::__private::submit_generator(&META, self.0, ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*])
                    }
                }
            }
        });
    }
    // `num_returns = k`: the call gives k refs, one per element of the
    // returned k-tuple, each made by a projection task (no CPU) that reads
    // the whole result.
    let returns: Option<Vec<Type>> = match (opts.num_returns, &ret) {
        (None | Some(1), _) => None,
        (Some(k), Type::Tuple(t)) if t.elems.len() == k => Some(t.elems.iter().cloned().collect()),
        (Some(k), _) => return Err(syn::Error::new_spanned(&sig.output, format!("num_returns = {k} needs the function to return a {k}-tuple"))),
    };
    let (remote_ret, remote_body, options_body, projections) = match &returns {
        None => (
            quote!(::shoal::ObjectRef<#ret>),
            quote!(::shoal::__private::submit(&META, ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*])),
            quote!(::shoal::__private::submit_with(&META, self.0, ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*])),
            quote!(),
        ),
        Some(elems) => {
            let proj: Vec<proc_macro2::Ident> = (0..elems.len()).map(|i| format_ident!("__return_{}", i)).collect();
            let idx: Vec<syn::Index> = (0..elems.len()).map(syn::Index::from).collect();
            (
                quote!((#(::shoal::ObjectRef<#elems>,)*)),
                quote! {
                    let whole: ::shoal::ObjectRef<#ret> = ::shoal::__private::submit(&META, ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*]);
                    (#(#proj::remote(&whole),)*)
                },
                quote! {
                    let whole: ::shoal::ObjectRef<#ret> = ::shoal::__private::submit_with(&META, self.0, ::std::vec![#(::shoal::IntoArg::into_arg(#arg_names)),*]);
                    (#(#proj::remote(&whole),)*)
                },
                quote! {
                    #(
                        #[doc(hidden)]
                        #[::shoal::remote(num_cpus = 0, max_retries = #max_retries)]
                        pub fn #proj(whole: #ret) -> #elems {
                            whole.#idx
                        }
                    )*
                },
            )
        }
    };
    let slice_ident = format_ident!("__SHOAL_REGISTRATION_{}", ident.to_string().to_uppercase(), span = Span::call_site());
    let chunk_ident = format_ident!("__SHOAL_CHUNK_REGISTRATION_{}", ident.to_string().to_uppercase(), span = Span::call_site());
    let process_ident = format_ident!("__SHOAL_PROCESS_REGISTRATION_{}", ident.to_string().to_uppercase(), span = Span::call_site());
    let unary_impl = if n == 1 {
        let t = &arg_types[0];
        quote! {
            impl ::shoal::UnaryFn for Func {
                type Arg = #t;
                fn args(arg: #t) -> (#t,) {
                    (arg,)
                }
            }
        }
    } else {
        quote!()
    };
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case, clippy::all, unused_imports)]
        #vis mod #ident {
            use super::*;

            #name_and_meta

            #[doc(hidden)]
            pub fn __invoke(args: &[::shoal::__private::Bytes]) -> ::core::result::Result<::shoal::__private::Encoded, ::shoal::__private::InvokeError> {
                ::shoal::__private::check_arity(args, #n)?;
                #( let #arg_names: #arg_types = ::shoal::__private::decode_arg(args, #indices)?; )*
                let out: #ret = #call;
                ::shoal::__private::encode_result(out)
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static #slice_ident: ::shoal::__private::RemoteFunction = ::shoal::__private::RemoteFunction { name: NAME, invoke: __invoke };

            /// Submits a call to the cluster; returns a reference to its future result at once
            /// (with `num_returns = k`, one reference per element of the returned tuple).
            /// Each argument may be a value or an `ObjectRef` of the parameter's type.
            pub fn remote(#(#arg_names: impl ::shoal::IntoArg<#arg_types>),*) -> #remote_ret {
                #remote_body
            }

            #projections

            /// Metadata of the batch form used by `Pool`, `Parallel` and `Process`.
            pub static CHUNK_META: ::shoal::__private::FunctionMeta = ::shoal::__private::FunctionMeta::new(
                ::core::concat!(#name_expr, "::chunk"),
                #num_cpus,
                &[#((#res_names, #res_amounts)),*],
                #max_retries,
                #retry_exceptions,
            );

            #[doc(hidden)]
            pub fn __invoke_chunk(args: &[::shoal::__private::Bytes]) -> ::core::result::Result<::shoal::__private::Encoded, ::shoal::__private::InvokeError> {
                ::shoal::__private::run_chunk::<(#(#arg_types,)*), #ret, _>(args, |(#(#arg_names,)*)| #call)
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static #chunk_ident: ::shoal::__private::RemoteFunction = ::shoal::__private::RemoteFunction { name: CHUNK_META.name, invoke: __invoke_chunk };

            /// Metadata of the form `Process::spawn` runs (in a process of its own).
            pub static PROCESS_META: ::shoal::__private::FunctionMeta = ::shoal::__private::FunctionMeta::new(
                ::core::concat!(#name_expr, "::process"),
                #num_cpus,
                &[#((#res_names, #res_amounts)),*],
                0,
                false,
            );

            #[doc(hidden)]
            pub fn __invoke_process(args: &[::shoal::__private::Bytes]) -> ::core::result::Result<::shoal::__private::Encoded, ::shoal::__private::InvokeError> {
                ::shoal::__private::run_process::<(#(#arg_types,)*), #ret, _>(args, |(#(#arg_names,)*)| #call)
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static #process_ident: ::shoal::__private::RemoteFunction = ::shoal::__private::RemoteFunction { name: PROCESS_META.name, invoke: __invoke_process };

            /// The function as a value, for `Pool::map`, `Parallel` and `Process::spawn`.
            #[derive(Clone, Copy, Debug)]
            pub struct Func;

            /// The function as a value: `pool.map(f::func, items)`.
            #[allow(non_upper_case_globals)]
            pub const func: Func = Func;

            impl ::shoal::RemoteFn for Func {
                type Args = (#(#arg_types,)*);
                type Output = #ret;
                fn name(&self) -> &'static str {
                    NAME
                }
                fn chunk_meta(&self) -> &'static ::shoal::__private::FunctionMeta {
                    &CHUNK_META
                }
                fn process_meta(&self) -> &'static ::shoal::__private::FunctionMeta {
                    &PROCESS_META
                }
            }

            #unary_impl

            impl Func {
                /// A call not yet submitted (joblib's `delayed(f)(args)`), for `shoal::parallel`.
                pub fn call(self, #(#arg_names: #arg_types),*) -> ::shoal::Call<Func> {
                    ::shoal::Call::new(self, (#(#arg_names,)*))
                }
            }

            /// Per-call options (`num_cpus`, `resources`, `max_retries`,
            /// `retry_on_panic`, placement), then `.remote(..)`.
            pub fn options() -> Options {
                Options(::shoal::CallOptions::default())
            }

            /// Options for one call; see [`options`].
            pub struct Options(::shoal::CallOptions);

            impl Options {
                #setters

                /// Submits the call with these options.
                pub fn remote(self, #(#arg_names: impl ::shoal::IntoArg<#arg_types>),*) -> #remote_ret {
                    #options_body
                }
            }
        }
    })
}

/// Makes an `impl` block's type an actor. See `shoal::actor`.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let opts = syn::parse_macro_input!(attr as actor::ActorOptions);
    let block = syn::parse_macro_input!(item as syn::ItemImpl);
    match actor::expand(opts, block) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Marks the program's entry point. See `shoal::main`.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[shoal::main] takes no arguments").to_compile_error().into();
    }
    let func = syn::parse_macro_input!(item as ItemFn);
    let attrs = &func.attrs;
    let vis = &func.vis;
    let sig = &func.sig;
    let body = &func.block;
    let ret = &sig.output;
    let ident = &sig.ident;
    if sig.asyncness.is_some() {
        quote! {
            #(#attrs)*
            #vis fn #ident() #ret {
                ::shoal::__private::run_main(async move #body)
            }
        }
        .into()
    } else {
        quote! {
            #(#attrs)*
            #vis fn #ident() #ret {
                ::shoal::__private::enter_main();
                #body
            }
        }
        .into()
    }
}
